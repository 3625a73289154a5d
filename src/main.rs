fn main() -> std::process::ExitCode {
    tokenkeeper::daemon::trim::tune_malloc();
    tokenkeeper::install_crypto_provider();
    tokenkeeper::cli::main()
}
