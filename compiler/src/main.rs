use clap::Parser;

fn main() {
    let cli = lpc::cli::Cli::parse();
    // Bad input is reported as errors, never as panics. Should a bug panic
    // anyway, the message becomes one `error:` line (exit code 2) instead of
    // a backtrace; the interpreter names the node it was running.
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| lpc::cli::run(cli));
    match result {
        Ok(Ok(text)) => print!("{text}"),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            eprintln!("error: internal error in lpc: {what}");
            std::process::exit(2);
        }
    }
}
