//! Shape helpers shared by the interpreter's ops.

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy-style multidirectional broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    // A zero-sized dim wins over 1.
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            if d == 0 {
                out[rank - s.len() + i] = 0;
            }
        }
    }
    Ok(out)
}

/// For each element of `to`, the flat index of the element of `from` it
/// broadcasts from.
pub fn broadcast_index(from: &[usize], to: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    if from == to {
        return (0..n).collect();
    }
    let rank = to.len();
    let fs = strides(from);
    let mut st = vec![0usize; rank];
    for (i, &d) in from.iter().enumerate() {
        let j = rank - from.len() + i;
        st[j] = if d == 1 { 0 } else { fs[i] };
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let mut flat = 0usize;
    for _ in 0..n {
        out.push(flat);
        for d in (0..rank).rev() {
            idx[d] += 1;
            flat += st[d];
            if idx[d] < to[d] {
                break;
            }
            flat -= st[d] * idx[d];
            idx[d] = 0;
        }
    }
    out
}

/// Normalizes a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// Permutes a C-order array.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> (Vec<T>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let is = strides(shape);
    let pst: Vec<usize> = perm.iter().map(|&p| is[p]).collect();
    let n = x.len();
    let mut out = Vec::with_capacity(n);
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    let mut flat = 0usize;
    for _ in 0..n {
        out.push(x[flat]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            flat += pst[d];
            if idx[d] < out_shape[d] {
                break;
            }
            flat -= pst[d] * idx[d];
            idx[d] = 0;
        }
    }
    (out, out_shape)
}

/// `erf` to about 1e-7 (Abramowitz and Stegun 7.1.26 in f64).
pub fn erf(x: f64) -> f64 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-a * a).exp();
    s * y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        assert_eq!(
            broadcast_shapes(&[&[2, 1, 3], &[4, 1]]).unwrap(),
            vec![2, 4, 3]
        );
        assert!(broadcast_shapes(&[&[2], &[3]]).is_err());
        assert_eq!(broadcast_index(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn transposes() {
        let (v, s) = transpose(&[0, 1, 2, 3, 4, 5], &[2, 3], &[1, 0]);
        assert_eq!((v, s), (vec![0, 3, 1, 4, 2, 5], vec![3, 2]));
    }

    #[test]
    fn erf_is_accurate() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "{x}");
        }
    }
}
