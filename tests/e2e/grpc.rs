//! gRPC (tonic client and server) through the inbound listener: streamed messages, statuses in
//! trailers, and the status the proxy writes itself when it cannot reach the server.

use linkerd_tests::{client, grpc, proxy::TestProxy, run};
use linkerd2_proxy_api::destination::{destination_client::DestinationClient, update};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_error_statuses_pass_through() {
    run(async {
        let (server, _task) = grpc::serve().await;
        let proxy = TestProxy::inbound_to(server).await;
        let mut dst = grpc::client(proxy.inbound).await;

        let path = "web.ns.svc.cluster.local:80";
        let mut stream = dst
            .get(grpc::get_destination(path))
            .await
            .expect("Get through the proxy")
            .into_inner();
        let mut weights = Vec::new();
        while let Some(u) = stream.message().await.expect("streamed update") {
            match u.update {
                Some(update::Update::Add(set)) => {
                    assert_eq!(set.metric_labels["path"], path);
                    weights.extend(set.addrs.iter().map(|a| a.weight));
                }
                other => panic!("unexpected update {other:?}"),
            }
        }
        assert_eq!(weights, (1..=grpc::UPDATES).collect::<Vec<_>>());
        let trailers = stream.trailers().await.expect("trailers");
        assert!(trailers.is_some(), "a streamed response ends with trailers");

        // NOT_FOUND travels as a grpc-status; it must reach the client unchanged.
        let err = dst
            .get_profile(grpc::get_destination(path))
            .await
            .expect_err("GetProfile fails");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(err.message(), "x");
        assert!(
            err.metadata().get("l5d-proxy-error").is_none(),
            "the application's error is not the proxy's: {err:?}"
        );

        // The connection is still usable after an error status.
        let mut again = dst
            .get(grpc::get_destination("again:80"))
            .await
            .expect("Get again")
            .into_inner();
        let mut n = 0;
        while again.message().await.expect("update").is_some() {
            n += 1;
        }
        assert_eq!(n, grpc::UPDATES);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    run(async {
        let closed = client::closed_port();
        let proxy = TestProxy::inbound_to(closed.addr()).await;
        let mut dst = grpc::client(proxy.inbound).await;
        // Whether tonic reports a trailers-only error from the call or the first message, it
        // must be a gRPC status, not a transport error.
        let status = match dst.get(grpc::get_destination("web:80")).await {
            Err(s) => s,
            Ok(rsp) => rsp
                .into_inner()
                .message()
                .await
                .expect_err("no updates from an unreachable server"),
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.metadata().get("l5d-proxy-error").is_some(),
            "the proxy names its error: {status:?}"
        );
        let err = dst
            .get_profile(grpc::get_destination("web:80"))
            .await
            .expect_err("GetProfile fails");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_outbound_proxy_mode() {
    run(async {
        // The channel connects to the outbound listener; :authority names the real server.
        let (server, _task) = grpc::serve().await;
        let proxy = TestProxy::start(&[]).await;
        let origin: http::Uri = format!("http://{server}").parse().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
            .unwrap()
            .origin(origin)
            .connect()
            .await
            .unwrap();
        let mut dst = DestinationClient::new(channel);
        let mut stream = dst
            .get(grpc::get_destination("web:80"))
            .await
            .expect("Get")
            .into_inner();
        let mut n = 0;
        while stream.message().await.expect("update").is_some() {
            n += 1;
        }
        assert_eq!(n, grpc::UPDATES);
        let err = dst
            .get_profile(grpc::get_destination("web:80"))
            .await
            .expect_err("GetProfile fails");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    })
    .await
}
