fn main() -> std::process::ExitCode {
    linkerd_proxy::main()
}

/// The only two functions of the C math library the proxy calls (`exp`: the balancer's
/// peak-EWMA decay; `pow`: tokio's multi-threaded scheduler), defined here from the pure-Rust
/// `libm` crate (musl's algorithms, within 1 ulp) so that the sidecar does not load glibc's
/// libm.so at all: mapping it costs every sidecar about 0.5 MB of resident memory for two
/// functions. A symbol defined in the executable takes precedence over a shared library's at
/// link time, and with `--as-needed` (rustc's default) libm.so is then not linked.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod libm_shim {
    // SAFETY: `no_mangle` is unsafe because the exported name could clash with another
    // definition of a different type. These two have exactly the C prototypes of the libm
    // functions they replace (`double exp(double)`, `double pow(double, double)`, ISO C
    // 7.12.6.1 and 7.12.7.4), use the C ABI, and are total safe Rust (no panics, no UB for
    // any input, NaN and infinities included), so every caller, Rust or C, gets a function
    // honouring the contract it was compiled against. No other definition of either symbol
    // is linked into this executable: the shared libm.so's are interposed, not duplicated.
    #[unsafe(no_mangle)]
    pub extern "C" fn exp(x: f64) -> f64 {
        libm::exp(x)
    }

    // SAFETY: as above.
    #[unsafe(no_mangle)]
    pub extern "C" fn pow(x: f64, y: f64) -> f64 {
        libm::pow(x, y)
    }
}
