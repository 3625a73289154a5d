fn main() -> std::process::ExitCode {
    tokenkeeper::install_crypto_provider();
    tokenkeeper::cli::main()
}
