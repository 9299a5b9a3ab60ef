//! The upload endpoint over real HTTP on 127.0.0.1: tokens, streaming into a volume, refusals.

use std::sync::{Arc, Mutex};
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
    format!("http://{addr}/v1beta1/upload")
}

fn post(url: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let agent =
        ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let mut req = agent.post(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn image() -> Vec<u8> {
    (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect()
}

#[test]
fn uploads_need_a_token_stream_into_the_volume_and_use_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let pool: Arc<dyn VolumeProvider> = Arc::new(DirPool::new(dir.path()).unwrap());
    let finished = Arc::new(Mutex::new(Vec::new()));
    let f = finished.clone();
    let srv = UploadServer::new(
        pool.clone(),
        Some(Arc::new(move |id, r| f.lock().unwrap().push((id.clone(), r.is_ok())))),
    );
    let url = serve(&srv);
    let id = VolumeId::new("default", "upload-datavolume");
    let token = srv.issue_token(&id, VolumeFormat::Raw, Duration::from_secs(60)).unwrap();

    assert_eq!(post(&url, None, b"x").0, 401);
    assert_eq!(post(&url, Some("not-a-token"), b"x").0, 401);

    // A payload that is not an image is refused, leaves nothing, and the token can be used again.
    let (code, msg) = post(&url, Some(&token), b"<!DOCTYPE html><html></html>");
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("not a disk image"), "{msg}");
    assert!(pool.get(&id).unwrap().is_none());

    let img = image();
    let (code, msg) = post(&url, Some(&token), &img);
    assert_eq!(code, 200, "{msg}");
    let v = pool.open(&id, true).unwrap();
    let mut back = vec![0u8; img.len()];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(back, img);
    // The token is used up.
    assert_eq!(post(&url, Some(&token), &img).0, 401);
    // A second token for an existing volume: conflict.
    let t2 = srv.issue_token(&id, VolumeFormat::Raw, Duration::from_secs(60)).unwrap();
    assert_eq!(post(&url, Some(&t2), &img).0, 409);
    assert_eq!(*finished.lock().unwrap(), vec![(id.clone(), false), (id, true)]);
}

#[test]
fn expired_tokens_are_refused_and_compressed_uploads_are_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let pool: Arc<dyn VolumeProvider> = Arc::new(DirPool::new(dir.path()).unwrap());
    let srv = UploadServer::new(pool.clone(), None);
    let url = serve(&srv);
    let id = VolumeId::new("default", "gz");
    let old = srv.issue_token(&id, VolumeFormat::Raw, Duration::from_millis(1)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(post(&url, Some(&old), b"x").0, 401);
    let img = image();
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        e.write_all(&img).unwrap();
        e.finish().unwrap();
    }
    let t = srv.issue_token(&id, VolumeFormat::Qcow2, Duration::from_secs(60)).unwrap();
    let (code, msg) = post(&url, Some(&t), &gz);
    assert_eq!(code, 200, "{msg}");
    let v = pool.get(&id).unwrap().unwrap();
    assert_eq!((v.format, v.size), (VolumeFormat::Qcow2, img.len() as u64));
}
