//! `proxy = "socks5://..."` on an endpoint and on a target, through a
//! minimal SOCKS5 proxy (RFC 1928, no authentication, CONNECT only) that
//! counts the connections it forwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::{binary, text};
use crate::support::{Api, Receiver, Reply};

/// Starts the proxy; returns its address and its count of connections.
async fn socks5() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let _ = forward(client, &count).await;
            });
        }
    });
    (address, connections)
}

/// Greeting, CONNECT, then bytes both ways until either side closes.
async fn forward(mut client: TcpStream, count: &AtomicUsize) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    client.read_exact(&mut methods).await?;
    // Version 5, "no authentication required".
    client.write_all(&[5, 0]).await?;
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let length = client.read_u8().await? as usize;
            let mut name = vec![0u8; length];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Err(std::io::Error::other("only IPv4 and names")),
    };
    let port = client.read_u16().await?;
    let mut upstream = TcpStream::connect((host.as_str(), port)).await?;
    count.fetch_add(1, Ordering::SeqCst);
    // Succeeded, bound to 0.0.0.0:0.
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[tokio::test]
async fn an_endpoint_and_a_target_go_through_their_socks5_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, connections) = socks5().await;
    let api = Api::start(Reply::json("{\"via\":\"socks\"}")).await;
    let receiver = Receiver::start().await;
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "[[target]]\nname = \"hook\"\nurl = \"{}\"\nproxy = \"socks5://{proxy}\"\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"1m\"\nproxy = \"socks5h://{proxy}\"\n",
            receiver.url(),
            api.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut command = binary();
        command
            .args(args)
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        command.output()
    };
    let output = run(&["once", "-c", path.to_str().unwrap(), "data"])
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("\"via\": \"socks\""), "{stderr}");
    assert_eq!(api.requests(), 1);
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    let output = run(&["test", "-c", path.to_str().unwrap(), "hook"])
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
