//! `virtctl image-upload` against the upload endpoint on 127.0.0.1.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use virt_storage::upload::UploadServer;
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId, VolumeProvider};

fn serve(srv: &Arc<UploadServer>) -> String {
    let app = srv.router();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn virtctl(args: &[&str], token: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_virtctl"))
        .args(args)
        .env("VIRT_UPLOAD_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn image_upload_fills_the_datavolume_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let pool: Arc<dyn VolumeProvider> = Arc::new(DirPool::new(dir.path().join("pool")).unwrap());
    let srv = UploadServer::new(pool.clone(), None);
    let base = serve(&srv);
    let img = dir.path().join("disk.img");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let id = VolumeId::new("default", "upload-datavolume");
    let token = srv.issue_token(&id, VolumeFormat::Raw, Duration::from_secs(60)).unwrap();
    let img_s = img.to_str().unwrap();

    let (code, _, err) = virtctl(
        &[
            "image-upload",
            "dv",
            "upload-datavolume",
            "--image-path",
            img_s,
            "--uploadproxy-url",
            &base,
            "--quiet",
        ],
        "wrong",
    );
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 401"), "{err}");

    let (code, out, err) = virtctl(
        &[
            "image-upload",
            "dv",
            "upload-datavolume",
            "--image-path",
            img_s,
            "--uploadproxy-url",
            &base,
            "--quiet",
        ],
        &token,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("completed"), "{out}");
    let v = pool.open(&id, true).unwrap();
    let mut back = vec![0u8; data.len()];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);

    let (code, _, err) = virtctl(
        &["image-upload", "dv", "x", "--image-path", "/nonexistent.img", "--uploadproxy-url", &base],
        &token,
    );
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.img"), "{err}");
    let (code, _, _) =
        virtctl(&["image-upload", "pvc", "x", "--image-path", img_s, "--uploadproxy-url", &base], &token);
    assert_eq!(code, 2);
}
