use clap::Parser;

fn main() {
    let cli = lpc::cli::Cli::parse();
    match lpc::cli::run(cli) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
