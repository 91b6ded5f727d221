//! A 1 GiB upload to a web role that writes it to a blob streams through: the host's memory
//! stays far below the body's size. (Its own test binary, so the process's peak RSS is this
//! test's.)

use std::time::Duration;

use rolehost_storage::blob::{ByteRange, GetBlobOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GIB: u64 = 1 << 30;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap()
}

/// Byte `i` of the uploaded body.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_into_a_blob_without_sitting_in_host_memory() {
    let mut t = rolehost_tests::prepare(
        r#"
        [service]
        name = "upload"
        [roles.Web]
        kind = "web"
        component = "{guest:hello_web}"
        max-body-bytes = 2147483648
        request-timeout-ms = 300000
        [[roles.Web.endpoints]]
        port = 0
        "#,
    );
    t.start().await;
    let addr = t.service().endpoints()[0].1;
    let before = peak_rss_mib();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /store?name=big HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut sent: u64 = 0;
    while sent < GIB {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = byte_at(sent + j as u64);
        }
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(300),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer within the request timeout")
    .unwrap();
    assert!(
        response.contains(&format!("stored {GIB} bytes")),
        "{response}"
    );
    let peak = peak_rss_mib();
    eprintln!("peak RSS: {before} MiB before, {peak} MiB after a 1024 MiB upload");
    assert!(
        peak - before < 256,
        "the body never sat whole in memory: {before} -> {peak} MiB"
    );

    // The blob holds exactly the bytes sent: check a few ranges across it.
    for start in [0, 4 << 20, (GIB / 2) + 12345, GIB - 4096] {
        let opts = GetBlobOptions {
            range: Some(ByteRange {
                start,
                end: Some(start + 4095),
            }),
            ..GetBlobOptions::default()
        };
        let mut read = t
            .store
            .get_blob(&t.account, "uploads", "big", &opts)
            .unwrap();
        assert_eq!(read.properties.size, GIB);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut read.reader, &mut got).unwrap();
        let want: Vec<u8> = (start..start + 4096).map(byte_at).collect();
        assert_eq!(got, want, "range at {start}");
    }
    t.shutdown().await;
}
