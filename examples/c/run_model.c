/* Runs an lpc-compiled model on .npy inputs, through the C API only.
 *
 *   cc -O2 -I DIR -DLPC_MODEL_HEADER='"model.h"' run_model.c -o run_model -ldl
 *   ./run_model DIR/model.so INPUT_DIR OUTPUT_DIR [THREADS]
 *
 * The library is opened with dlopen, so one build of this program runs any
 * compiled model (the header only supplies the API's types). Inputs are read
 * from INPUT_DIR/<input name>.npy ('/' in names becomes '_'); outputs are
 * written to OUTPUT_DIR/<output name>.npy. The weights are the .lpcw file
 * beside the library, or the embedded ones when there is none.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include LPC_MODEL_HEADER

typedef lpc_model *(*load_fn)(const char *, const lpc_options *);
typedef int (*run_fn)(lpc_model *, const lpc_tensor *, int64_t, lpc_tensor *, int64_t);
typedef void (*free_fn)(lpc_model *);
typedef const char *(*err_fn)(void);
typedef int64_t (*count_fn)(const lpc_model *);
typedef const char *(*name_fn)(const lpc_model *, int64_t);
typedef int32_t (*dtype_fn)(const lpc_model *, int64_t);

static const struct { int32_t code; const char *descr; int size; } TYPES[] = {
    {LPC_F32, "<f4", 4}, {LPC_F64, "<f8", 8}, {LPC_I64, "<i8", 8}, {LPC_I32, "<i4", 4},
    {LPC_I8, "|i1", 1},  {LPC_U8, "|u1", 1},  {LPC_BOOL, "|b1", 1}, {LPC_F16, "<f2", 2},
};

static int die(const char *what, const char *detail) {
  fprintf(stderr, "error: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(2);
}

static void file_name(char *out, size_t n, const char *dir, const char *name) {
  size_t k = (size_t)snprintf(out, n, "%s/", dir);
  for (const char *c = name; *c && k + 5 < n; c++) out[k++] = (*c == '/' || *c == '\\') ? '_' : *c;
  snprintf(out + k, n - k, ".npy");
}

/* Reads a C-order .npy (version 1-3) into a freshly allocated tensor. */
static void read_npy(const char *path, int32_t want, lpc_tensor *t) {
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open", path);
  unsigned char pre[10];
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) die("not a .npy file", path);
  size_t hlen;
  if (pre[6] == 1) {
    hlen = pre[8] | (pre[9] << 8);
  } else {
    unsigned char b[2];
    if (fread(b, 1, 2, f) != 2) die("truncated .npy header", path);
    hlen = pre[8] | (pre[9] << 8) | (b[0] << 16) | ((size_t)b[1] << 24);
  }
  char *h = calloc(hlen + 1, 1);
  if (!h || fread(h, 1, hlen, f) != hlen) die("truncated .npy header", path);
  if (strstr(h, "'fortran_order': True")) die("Fortran-order arrays are not supported", path);
  const char *d = strstr(h, "'descr': '");
  if (!d) die("no descr in .npy header", path);
  d += 10;
  int size = 0;
  t->dtype = -1;
  for (size_t i = 0; i < sizeof TYPES / sizeof *TYPES; i++)
    if (strncmp(d, TYPES[i].descr, 3) == 0) t->dtype = TYPES[i].code, size = TYPES[i].size;
  if (t->dtype != want) die("element type differs from the model's input", path);
  const char *s = strstr(h, "'shape': (");
  if (!s) die("no shape in .npy header", path);
  s += 10;
  t->rank = 0;
  size_t n = 1;
  while (*s && *s != ')') {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s) break;
    if (t->rank == LPC_MAX_RANK) die("rank above LPC_MAX_RANK", path);
    t->dims[t->rank++] = v;
    n *= (size_t)v;
    s = end;
    while (*s == ',' || *s == ' ') s++;
  }
  free(h);
  t->data = malloc(n * size + 1);
  if (!t->data || fread(t->data, size, n, f) != n) die("truncated .npy data", path);
  fclose(f);
}

static void write_npy(const char *path, const lpc_tensor *t) {
  const char *descr = NULL;
  int size = 0;
  for (size_t i = 0; i < sizeof TYPES / sizeof *TYPES; i++)
    if (TYPES[i].code == t->dtype) descr = TYPES[i].descr, size = TYPES[i].size;
  if (!descr) die("output of an unsupported element type", path);
  char shape[256] = "";
  size_t n = 1, k = 0;
  for (int i = 0; i < t->rank; i++) {
    k += (size_t)snprintf(shape + k, sizeof shape - k, "%lld,%s", (long long)t->dims[i],
                          i + 1 < t->rank ? " " : "");
    n *= (size_t)t->dims[i];
  }
  if (t->rank > 1) shape[k - 1] = 0; /* (a, b) but (a,) */
  char h[512];
  int len = snprintf(h, sizeof h, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape);
  int total = ((10 + len + 1 + 63) / 64) * 64;
  memset(h + len, ' ', (size_t)(total - 10 - len - 1));
  h[total - 10 - 1] = '\n';
  FILE *f = fopen(path, "wb");
  if (!f) die("cannot write", path);
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((total - 10) & 0xff),
                           (unsigned char)((total - 10) >> 8)};
  if (fwrite(pre, 1, 10, f) != 10 || fwrite(h, 1, (size_t)(total - 10), f) != (size_t)(total - 10) ||
      fwrite(t->data, size, n, f) != n)
    die("cannot write", path);
  fclose(f);
}

int main(int argc, char **argv) {
  if (argc < 4) die("usage: run_model MODEL.so INPUT_DIR OUTPUT_DIR [THREADS]", NULL);
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) die("dlopen", dlerror());
  load_fn load = (load_fn)dlsym(lib, "lpc_model_load");
  run_fn run = (run_fn)dlsym(lib, "lpc_model_run");
  free_fn mfree = (free_fn)dlsym(lib, "lpc_model_free");
  err_fn last_error = (err_fn)dlsym(lib, "lpc_last_error");
  count_fn n_in = (count_fn)dlsym(lib, "lpc_model_num_inputs");
  count_fn n_out = (count_fn)dlsym(lib, "lpc_model_num_outputs");
  name_fn in_name = (name_fn)dlsym(lib, "lpc_model_input_name");
  name_fn out_name = (name_fn)dlsym(lib, "lpc_model_output_name");
  dtype_fn in_dtype = (dtype_fn)dlsym(lib, "lpc_model_input_dtype");
  if (!load || !run || !mfree || !last_error || !n_in || !n_out || !in_name || !out_name || !in_dtype)
    die("not an lpc library", argv[1]);

  /* model.so -> model.lpcw when present. */
  char weights[4096];
  snprintf(weights, sizeof weights, "%s", argv[1]);
  char *dot = strrchr(weights, '.');
  if (dot) snprintf(dot, sizeof weights - (size_t)(dot - weights), ".lpcw");
  FILE *wf = fopen(weights, "rb");
  if (wf) fclose(wf);
  lpc_options opts = {argc > 4 ? atoi(argv[4]) : 0};
  lpc_model *m = load(wf ? weights : NULL, &opts);
  if (!m) die("lpc_model_load", last_error());

  int64_t ni = n_in(m), no = n_out(m);
  lpc_tensor *ins = calloc((size_t)ni + 1, sizeof *ins), *outs = calloc((size_t)no + 1, sizeof *outs);
  char path[4096];
  for (int64_t i = 0; i < ni; i++) {
    file_name(path, sizeof path, argv[2], in_name(m, i));
    read_npy(path, in_dtype(m, i), &ins[i]);
  }
  int rc = run(m, ins, ni, outs, no);
  if (rc != LPC_OK) die("lpc_model_run", last_error());
  for (int64_t i = 0; i < no; i++) {
    file_name(path, sizeof path, argv[3], out_name(m, i));
    write_npy(path, &outs[i]);
    printf("%s: rank %d, first value", out_name(m, i), outs[i].rank);
    if (outs[i].dtype == LPC_F32) printf(" %g", (double)((float *)outs[i].data)[0]);
    printf("\n");
  }
  for (int64_t i = 0; i < ni; i++) free(ins[i].data);
  free(ins);
  free(outs);
  mfree(m);
  dlclose(lib);
  return 0;
}
