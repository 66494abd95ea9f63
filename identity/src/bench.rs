//! `mesh identity bench`: Certify throughput and latency through the real gRPC server over
//! loopback, client and server in one process. Run it on a current-thread runtime to
//! measure one core (the `mesh` binary does).

use crate::{
    Error,
    ca::LeafPolicy,
    server::{self, AuthConfig, Config},
    token::{self, LocalTokens},
    trust::{TrustOptions, generate_trust},
};
use proto::{
    api::identity::{CertifyRequest, identity_client::IdentityClient},
    id::IdentityName,
};
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};
use tokio::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub duration: Duration,
    /// Requests in flight.
    pub concurrency: usize,
    /// Distinct keys/identities (each request's CSR is verified; nothing is cached).
    pub csrs: usize,
}

/// What was measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub runtime: &'static str,
    pub concurrency: usize,
    pub csrs: usize,
    pub seconds: f64,
    pub certs: u64,
    pub errors: u64,
    pub certs_per_sec: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

type Request = CertifyRequest;

/// Generates a trust anchor, issuer and token key in a temporary directory, serves on
/// `127.0.0.1:0`, drives `concurrency` concurrent Certify calls for `duration`, and reports.
pub async fn bench(opts: BenchOptions) -> Result<BenchReport, Error> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "mesh-identity-bench-{}-{nanos}",
        std::process::id()
    ));
    let result = run(&opts, dir.clone()).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

async fn run(opts: &BenchOptions, dir: PathBuf) -> Result<BenchReport, Error> {
    let key_file = dir.join("token.key");
    let (paths, key_file) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let paths = generate_trust(&TrustOptions::default())?
                .write(&dir)
                .map_err(Error::Write)?;
            token::write_key_file(&key_file)?;
            Ok((paths, key_file))
        })
        .await
        .map_err(|e| Error::Bench(e.to_string()))??
    };
    let tokens = LocalTokens::read_key_file(&key_file).await?;
    let requests = tokio::task::spawn_blocking({
        let n = opts.csrs.max(1);
        move || requests(&tokens, n)
    })
    .await
    .map_err(|e| Error::Bench(e.to_string()))??;

    let bound = server::bind(Config {
        addr: ([127, 0, 0, 1], 0).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        trust_anchors: paths.anchor,
        issuer_cert: paths.issuer_cert,
        issuer_key: paths.issuer_key,
        auth: AuthConfig::Local { key_file },
        policy: LeafPolicy::default(),
        reload_interval: Duration::from_secs(60),
    })
    .await?;
    let addr = bound.grpc_addr().map_err(Error::Write)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Bench(e.to_string()))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Bench(format!("cannot connect: {e}")))?;
    let client = IdentityClient::new(channel);

    // Warm up: connection, allocator, caches.
    drive(
        &client,
        &requests,
        opts.concurrency,
        Duration::from_millis(300),
    )
    .await;
    let start = Instant::now();
    let (mut latencies, errors) = drive(&client, &requests, opts.concurrency, opts.duration).await;
    let seconds = start.elapsed().as_secs_f64();

    let _ = stop.send(());
    let _ = server.await;
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(i).copied().unwrap_or(0)
    };
    Ok(BenchReport {
        runtime: match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        },
        concurrency: opts.concurrency,
        csrs: requests.len(),
        seconds,
        certs: latencies.len() as u64,
        errors,
        certs_per_sec: latencies.len() as f64 / seconds,
        latency_us_p50: pct(0.50),
        latency_us_p90: pct(0.90),
        latency_us_p99: pct(0.99),
        latency_us_max: latencies.last().copied().unwrap_or(0),
    })
}

/// `n` distinct P-256 keys, CSRs and tokens.
fn requests(tokens: &LocalTokens, n: usize) -> Result<Vec<Request>, Error> {
    let now = SystemTime::now();
    (0..n)
        .map(|i| {
            let name = format!("bench-{i}.bench.serviceaccount.identity.linkerd.cluster.local");
            let id: IdentityName = name.parse().map_err(|e| Error::Bench(format!("{e}")))?;
            let csr = csr_for(&name).map_err(|e| Error::Bench(e.to_string()))?;
            Ok(CertifyRequest {
                identity: name,
                token: tokens
                    .mint(&id, Duration::from_secs(3600), now)
                    .into_bytes(),
                certificate_signing_request: csr,
            })
        })
        .collect()
}

/// A DER CSR for `name` with a fresh P-256 key, as the proxy makes one.
pub fn csr_for(name: &str) -> Result<Vec<u8>, rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(params.serialize_request(&key)?.der().to_vec())
}

/// Runs `concurrency` loops of Certify calls until `duration` passes; returns each
/// success's latency (µs) and the error count.
async fn drive(
    client: &IdentityClient<tonic::transport::Channel>,
    requests: &[Request],
    concurrency: usize,
    duration: Duration,
) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let mut client = client.clone();
        let reqs: Vec<Request> = requests
            .iter()
            .skip(w % requests.len())
            .chain(requests)
            .take(requests.len())
            .cloned()
            .collect();
        tasks.spawn(async move {
            let (mut lat, mut errors) = (Vec::with_capacity(1 << 16), 0u64);
            for req in reqs.iter().cycle() {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                match client.certify(req.clone()).await {
                    Ok(_) => lat.push(t0.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        if let Ok((lat, e)) = done {
            all.extend(lat);
            errors += e;
        }
    }
    (all, errors)
}
