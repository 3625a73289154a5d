fn main() -> std::process::ExitCode {
    tokenkeeper::cli::main()
}
