//! What this build is: `linkerd-proxy --version` and the `proxy_build_info` metric (Linkerd's
//! name and labels). The git commit and the build date come from the build's environment
//! (`MESH_GIT_SHA`, `MESH_BUILD_DATE`, as the Dockerfile sets them) and are `unknown` otherwise:
//! a build script that asked git would rebuild the proxy on every commit.

/// The package version.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the build was made from, if the build said.
pub(crate) const GIT_SHA: &str = match option_env!("MESH_GIT_SHA") {
    Some(s) => s,
    None => "unknown",
};
/// When the build was made, if the build said.
pub(crate) const DATE: &str = match option_env!("MESH_BUILD_DATE") {
    Some(s) => s,
    None => "unknown",
};
/// `release` or `debug`.
pub(crate) const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};
/// Who built it.
pub(crate) const VENDOR: &str = "mesh";

/// `0.1.0 (abc1234, release, built 2026-12-06T00:00:00Z)`.
pub(crate) fn describe() -> String {
    format!("{VERSION} ({GIT_SHA}, {PROFILE}, built {DATE})")
}

/// The `proxy_build_info` gauge, in Prometheus text.
pub(crate) fn metric() -> String {
    format!(
        "# HELP proxy_build_info Proxy build info.\n# TYPE proxy_build_info gauge\n\
         proxy_build_info{{date=\"{DATE}\",git_sha=\"{GIT_SHA}\",profile=\"{PROFILE}\",\
         vendor=\"{VENDOR}\",version=\"{VERSION}\"}} 1\n"
    )
}
