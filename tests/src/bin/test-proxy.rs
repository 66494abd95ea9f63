fn main() -> std::process::ExitCode {
    linkerd_proxy::main()
}
