//! One conformance suite run against every store backend: the folder, Ferry's embedded
//! store, moto (an independent S3 server) and Apache mod_dav over TLS. It records, per
//! backend, whether create-if-absent is atomic under a race; the protocol never relies on it.

use std::sync::Arc;

use bytes::Bytes;
use ferry_mailbox::store::{self, Created, Store, StoreConfig, StoreError};
use ferry_tests::servers::{Apache, Embedded, Moto, moto_program};
use ferry_tests::util::{free_port, missing};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    sequential_create_honoured: bool,
    race_rounds: usize,
    race_rounds_with_several_winners: usize,
}

impl Report {
    fn atomic(&self) -> bool {
        self.sequential_create_honoured && self.race_rounds_with_several_winners == 0
    }
}

async fn suite(backend: &str, s: Arc<dyn Store>) -> Report {
    let run = format!("conf/{}/", uuid::Uuid::now_v7().simple());
    let k = |name: &str| format!("{run}{name}");

    // Reads of what is not there.
    assert_eq!(s.get(&k("missing")).await.expect("get missing"), None);
    assert_eq!(
        s.list(&k("nothing/")).await.expect("list missing"),
        Default::default()
    );

    // Whole-object writes, overwrite, binary and large bodies.
    s.put(&k("a.json"), Bytes::from_static(b"one"))
        .await
        .expect("put");
    assert_eq!(
        s.get(&k("a.json")).await.expect("get").as_deref(),
        Some(&b"one"[..])
    );
    s.put(&k("a.json"), Bytes::from_static(b"two"))
        .await
        .expect("overwrite");
    assert_eq!(
        s.get(&k("a.json")).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(2 << 20).collect();
    s.put(&k("deep/er/blob"), Bytes::from(binary.clone()))
        .await
        .expect("put 2 MiB");
    assert_eq!(
        s.get(&k("deep/er/blob")).await.expect("get").as_deref(),
        Some(&binary[..])
    );

    // Ranged reads: inside, up to the end, past the end, of nothing.
    let blob = k("deep/er/blob");
    let range = |offset: u64, len: u64| {
        let s = s.clone();
        let blob = blob.clone();
        async move { s.get_range(&blob, offset, len).await.expect("get_range") }
    };
    assert_eq!(
        range(1000, 70_000).await.as_deref(),
        Some(&binary[1000..71_000]),
        "{backend}"
    );
    let size = binary.len() as u64;
    assert_eq!(
        range(size - 10, 10).await.as_deref(),
        Some(&binary[binary.len() - 10..])
    );
    assert_eq!(
        range(size - 10, 100).await.as_deref(),
        Some(&binary[binary.len() - 10..]),
        "{backend}: a range past the end gives what is there"
    );
    // Replaced by other bytes of the same size, a range reads the new ones.
    let other: Vec<u8> = binary.iter().map(|b| b ^ 0x5a).collect();
    s.put(&blob, Bytes::from(other.clone())).await.expect("put");
    assert_eq!(
        range(1000, 70_000).await.as_deref(),
        Some(&other[1000..71_000]),
        "{backend}: a range after a rewrite"
    );
    s.put(&blob, Bytes::from(binary.clone()))
        .await
        .expect("put");
    assert_eq!(
        s.get_range(&k("missing"), 0, 10)
            .await
            .expect("range of missing"),
        None
    );

    // One-level listing: objects with sizes and folders, relative names, sorted.
    s.put(&k("b.json"), Bytes::from_static(b"b"))
        .await
        .expect("put");
    let l = s.list(&run).await.expect("list");
    assert_eq!(l.objects, vec!["a.json", "b.json"], "{backend}");
    assert_eq!(l.sizes, vec![3, 1], "{backend}");
    assert_eq!(l.folders, vec!["deep"], "{backend}");
    let l = s.list(&k("deep/er/")).await.expect("list");
    assert_eq!(l.sizes, vec![size], "{backend}");
    let l = s.list(&k("deep/")).await.expect("list");
    assert!(
        l.objects.is_empty() && l.folders == vec!["er"],
        "{backend}: {l:?}"
    );

    // Delete is idempotent.
    s.delete(&k("a.json")).await.expect("delete");
    s.delete(&k("a.json")).await.expect("delete again");
    assert_eq!(s.get(&k("a.json")).await.expect("get"), None);
    assert_eq!(s.list(&run).await.expect("list").objects, vec!["b.json"]);

    // Keys that could escape the store are refused before any request.
    for bad in ["../x", "/abs", "a//b"] {
        assert!(
            matches!(s.get(bad).await, Err(StoreError::BadKey { .. })),
            "{backend} {bad}"
        );
    }

    // Create-if-absent, sequentially.
    let first = s
        .create(&k("c"), Bytes::from_static(b"1"))
        .await
        .expect("create");
    let second = s
        .create(&k("c"), Bytes::from_static(b"2"))
        .await
        .expect("create again");
    let sequential = first == Created::Created
        && second == Created::Exists
        && s.get(&k("c")).await.expect("get").as_deref() == Some(&b"1"[..]);

    // Create-if-absent under a 16-way race, with bodies large enough to widen the window.
    let rounds = 8;
    let mut several = 0;
    for round in 0..rounds {
        let key = k(&format!("race/{round}"));
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let s = s.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let body = Bytes::from(vec![i; 512 << 10]);
                    s.create(&key, body).await
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await.expect("join").expect("create in race") == Created::Created {
                winners += 1;
            }
        }
        if winners != 1 {
            several += 1;
        }
    }
    let report = Report {
        backend: backend.to_string(),
        sequential_create_honoured: sequential,
        race_rounds: rounds,
        race_rounds_with_several_winners: several,
    };
    eprintln!(
        "CONFORMANCE {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ferry/conformance");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join(format!("{backend}.json")),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
    report
}

async fn unreachable(config: StoreConfig) {
    let s = store::open(&config).expect("open");
    let err = s.get("x").await.expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test]
async fn folder_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store::open(&StoreConfig {
        url: format!("file://{}", dir.path().display()),
        ..Default::default()
    })
    .expect("open");
    let r = suite("folder", s).await;
    assert!(
        r.atomic(),
        "the folder store's create must be atomic: {r:?}"
    );
}

#[tokio::test]
async fn embedded_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Embedded::start(dir.path()).await.expect("embedded store");
    let s = store::open(&e.manager_store()).expect("open");
    let r = suite("embedded", s).await;
    assert!(
        r.atomic(),
        "the embedded store's create must be atomic: {r:?}"
    );

    let wrong = StoreConfig {
        secret_key: Some("wrong".into()),
        ..e.manager_store()
    };
    let err = store::open(&wrong)
        .expect("open")
        .get("x")
        .await
        .expect_err("bad secret");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");

    let untrusted = StoreConfig {
        ca_pem: Some(
            ferry_manager::tls::generate(&["127.0.0.1".into()])
                .expect("tls")
                .ca_pem,
        ),
        ..e.manager_store()
    };
    let err = store::open(&untrusted)
        .expect("open")
        .get("x")
        .await
        .expect_err("foreign CA");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");

    unreachable(StoreConfig {
        url: format!("s3+https://127.0.0.1:{}/ferry", free_port()),
        ..e.manager_store()
    })
    .await;
}

#[tokio::test]
async fn moto_backend() {
    let Some(program) = moto_program() else {
        return missing("moto_server (moto[server])");
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(&program, dir.path()).await.expect("moto");
    let s = store::open(&moto.store).expect("open");
    suite("moto", s).await;
}

#[tokio::test]
async fn apache_webdav_backend() {
    if !std::path::Path::new("/usr/sbin/apache2").exists() {
        return missing("apache2");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let apache = Apache::start(dir.path()).await.expect("apache");
    let s = store::open(&apache.store).expect("open");
    suite("apache-webdav", s).await;

    let wrong = StoreConfig {
        secret_key: Some("wrong".into()),
        ..apache.store.clone()
    };
    let err = store::open(&wrong)
        .expect("open")
        .get("x")
        .await
        .expect_err("bad password");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    unreachable(StoreConfig {
        url: format!("dav+https://127.0.0.1:{}/dav/", free_port()),
        ..apache.store.clone()
    })
    .await;
}
