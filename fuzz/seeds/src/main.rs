//! Writes each fuzz target's seed corpus into `fuzz/corpus/<target>/`: real inputs of each
//! kind, so fuzzing starts from the formats rather than from nothing. `cargo run -p
//! mesh-fuzz-seeds` in `fuzz/` rewrites them (ClientHellos carry fresh random bytes each time).

use linkerd_policy::{inbound, model::ClusterConfig, outbound, registry};
use prost::Message;
use rustls::pki_types::ServerName;
use std::{
    collections::BTreeSet,
    error::Error,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The first byte of a `detect` or `client_hello` input says how it is read (see
/// `fuzz_targets/common.rs`): 0 at once then closed, 1 at once then stalled, and larger values
/// in small chunks.
const AT_ONCE: u8 = 0;
const AT_ONCE_THEN_STALL: u8 = 1;
const CHUNKS_1_AND_3: u8 = chunks(1, 3);
const CHUNKS_5_AND_2: u8 = chunks(5, 2);

/// The control byte for chunks of `a` then `b` bytes in turn (1 to 8 each, not both 1).
const fn chunks(a: u8, b: u8) -> u8 {
    ((a - 1) | ((b - 1) << 3)) << 1
}

const TARGETS: [&str; 6] = [
    "detect",
    "client_hello",
    "h1_response",
    "policy_proto",
    "registry_yaml",
    "admission_review",
];

const IDENTITY: &str = "backend.demo.serviceaccount.identity.linkerd.cluster.local";

struct Corpus(PathBuf);

impl Corpus {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.0.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        Ok(())
    }
}

fn with_ctl(ctl: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ctl];
    v.extend_from_slice(payload);
    v
}

/// A ClientHello as the proxy's client (rustls, ring) sends it.
fn client_hello(server: &str, alpn: &[&[u8]], tls12: bool) -> Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        rustls::ALL_VERSIONS
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    conn.write_tls(&mut out)?;
    Ok(out)
}

const GET: &[u8] =
    b"GET /api/list?page=2 HTTP/1.1\r\nHost: backend.demo.svc.cluster.local:8080\r\n\
User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
const POST: &[u8] = b"POST /api/vote HTTP/1.1\r\nHost: web\r\nContent-Type: application/json\r\n\
Content-Length: 24\r\nConnection: keep-alive\r\n\r\n{\"choice\": \":doughnut:\"}";
const CONNECT: &[u8] = b"CONNECT backend.demo.svc.cluster.local:8443 HTTP/1.1\r\n\
Host: backend.demo.svc.cluster.local:8443\r\n\r\n";
/// An HTTP/2 client's preface, first SETTINGS and WINDOW_UPDATE (as h2 writes them).
const H2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x04\x00\x20\x00\x00\x00\x05\x00\x00\x40\x00\
\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x0f\x00\x01";

fn detect(c: &Corpus, hello: &[u8]) -> Result<()> {
    let t = "detect";
    c.write(t, "get", &with_ctl(AT_ONCE, GET))?;
    c.write(t, "get-chunked", &with_ctl(CHUNKS_1_AND_3, GET))?;
    c.write(t, "post", &with_ctl(CHUNKS_5_AND_2, POST))?;
    c.write(t, "connect", &with_ctl(AT_ONCE, CONNECT))?;
    c.write(t, "h2-preface", &with_ctl(AT_ONCE, H2))?;
    c.write(
        t,
        "h2-preface-paused",
        &with_ctl(AT_ONCE_THEN_STALL, &H2[..10]),
    )?;
    c.write(t, "get-paused", &with_ctl(AT_ONCE_THEN_STALL, &GET[..20]))?;
    c.write(t, "server-speaks-first", &with_ctl(AT_ONCE_THEN_STALL, b""))?;
    c.write(
        t,
        "bad-target",
        &with_ctl(AT_ONCE, b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
    )?;
    c.write(t, "tls", &with_ctl(AT_ONCE, hello))?;
    c.write(
        t,
        "ssh",
        &with_ctl(AT_ONCE, b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n"),
    )?;
    c.write(
        t,
        "redis",
        &with_ctl(CHUNKS_1_AND_3, b"*1\r\n$4\r\nPING\r\n"),
    )?;
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1100));
    c.write(t, "long-target", &with_ctl(AT_ONCE, long.as_bytes()))?;
    Ok(())
}

fn client_hellos(c: &Corpus) -> Result<Vec<u8>> {
    let t = "client_hello";
    let mesh = client_hello(IDENTITY, &[b"h2"], false)?;
    c.write(t, "mesh-identity-h2", &with_ctl(AT_ONCE, &mesh))?;
    c.write(t, "mesh-identity-chunked", &with_ctl(CHUNKS_5_AND_2, &mesh))?;
    c.write(
        t,
        "mesh-identity-truncated",
        &with_ctl(AT_ONCE_THEN_STALL, &mesh[..mesh.len() / 2]),
    )?;
    let app = client_hello("API.Example.COM", &[b"h2", b"http/1.1"], true)?;
    c.write(t, "app-tls12-and-13", &with_ctl(AT_ONCE, &app))?;
    // An address as the server name: rustls sends no SNI.
    let no_sni = client_hello("10.0.0.7", &[], false)?;
    c.write(t, "no-sni", &with_ctl(AT_ONCE, &no_sni))?;
    c.write(t, "http", &with_ctl(AT_ONCE, GET))?;
    Ok(mesh)
}

fn h1_responses(c: &Corpus) -> Result<()> {
    let t = "h1_response";
    let seeds: &[(&str, &[u8])] = &[
        (
            "ok-length",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\n\
Content-Length: 27\r\n\r\n{\"items\": [1, 2, 3], \"n\":3}",
        ),
        (
            "chunked-trailers",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
        ),
        (
            "continue-then-created",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
HTTP/1.1 201 Created\r\nLocation: /api/vote/7\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("until-close", b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.7\r\n\r\nthe body ends with the connection"),
        ("no-content", b"HTTP/1.1 204 No Content\r\nX-Request-Id: 42\r\n\r\n"),
        ("not-modified", b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nContent-Length: 100\r\n\r\n"),
        (
            "redirect-close",
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/\r\nConnection: close\r\n\
Content-Length: 0\r\n\r\n",
        ),
        (
            "proxy-error",
            b"HTTP/1.1 503 Service Unavailable\r\nl5d-proxy-error: connection refused\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "two-responses",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
        ),
        (
            "keep-alive-1.0",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
        ),
        ("truncated", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        ("folded-header", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\nContent-Length: 0\r\n\r\n"),
    ];
    for (name, bytes) in seeds {
        c.write(t, name, bytes)?;
    }
    Ok(())
}

/// The ```yaml blocks of a README that are registry files.
fn registry_blocks(readme: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(readme)?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        rest = &rest[start + 8..];
        let Some(end) = rest.find("```") else { break };
        let block = &rest[..end];
        if block.trim_start().starts_with("services:") {
            out.push(block.to_string());
        }
        rest = &rest[end + 3..];
    }
    Ok(out)
}

/// The registries, and what the policy service serves for them (encoded as on the wire).
fn registries_and_policies(c: &Corpus, repo: &Path) -> Result<()> {
    let mut blocks = Vec::new();
    for readme in ["policy/README.md", "destination/README.md"] {
        for (i, block) in registry_blocks(&repo.join(readme))?.into_iter().enumerate() {
            let name = format!("{}-{i}", readme.split('/').next().unwrap_or("readme"));
            c.write("registry_yaml", &name, block.as_bytes())?;
            blocks.push(block);
        }
    }
    c.write("registry_yaml", "empty-list", b"services: []\n")?;

    let cfg = ClusterConfig::default();
    let mut written = BTreeSet::new();
    for block in &blocks {
        let Ok(state) = registry::parse(block, &cfg) else {
            continue;
        };
        let mut ports: BTreeSet<u16> = [8080, 5432, 9090].into();
        for svc in state.services.values() {
            ports.extend(&svc.ports);
        }
        for key in state.workloads.keys() {
            for &port in &ports {
                if let Some(server) = inbound::server(&state, &cfg, key, port) {
                    written.insert(server.encode_to_vec());
                }
            }
        }
        for key in state.services.keys() {
            for &port in &ports {
                if let Some(policy) = outbound::policy(&state, &cfg, key, port) {
                    written.insert(policy.encode_to_vec());
                }
            }
        }
    }
    for (i, bytes) in written.iter().enumerate() {
        c.write("policy_proto", &format!("policy-{i:02}"), bytes)?;
    }
    Ok(())
}

/// The recorded AdmissionReview, and the same review for each pod fixture.
fn admission_reviews(c: &Corpus, repo: &Path) -> Result<()> {
    let t = "admission_review";
    let fixtures = repo.join("injector/tests/fixtures");
    let review = fs::read(fixtures.join("admission-review.json"))?;
    c.write(t, "recorded", &review)?;
    let review: serde_json::Value = serde_json::from_slice(&review)?;
    let mut names: Vec<_> = fs::read_dir(&fixtures)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("pod-") && n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in names {
        let yaml = fs::read_to_string(fixtures.join(&name))?;
        let pod: serde_json::Value = serde_saphyr::from_str(&yaml)?;
        let mut r = review.clone();
        r["request"]["object"] = pod;
        let name = name.trim_end_matches(".yaml");
        c.write(t, name, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = fuzz.join("..");
    let c = Corpus(fuzz.join("corpus"));
    for t in TARGETS {
        match fs::remove_dir_all(c.0.join(t)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let hello = client_hellos(&c)?;
    detect(&c, &hello)?;
    h1_responses(&c)?;
    registries_and_policies(&c, &repo)?;
    admission_reviews(&c, &repo)?;
    Ok(())
}
