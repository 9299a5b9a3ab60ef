use super::fat::*;
use super::*;
use std::io::Read;
use std::process::Command;

use virt_core::api::LocalObjectReference;

const SCRIPT: &str = "#!/bin/sh\necho 'printed from cloud-init userdata'\n";

fn info() -> SeedInfo {
    SeedInfo::new("testvm.default", "testvm")
}

fn inline(user: &str) -> CloudInitSource {
    CloudInitSource { user_data: Some(user.into()), ..Default::default() }
}

fn open(img: &[u8]) -> fatfs::FileSystem<RoImage> {
    fatfs::FileSystem::new(RoImage(Cursor::new(img.to_vec())), fatfs::FsOptions::new()).unwrap()
}

/// An owned copy of an image that refuses writes: fatfs wants Read + Write + Seek, and reading
/// must not change the image.
struct RoImage(Cursor<Vec<u8>>);
impl io::Read for RoImage {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl io::Write for RoImage {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("the test image is read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl io::Seek for RoImage {
    fn seek(&mut self, p: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(p)
    }
}

fn read(fs: &fatfs::FileSystem<RoImage>, path: &str) -> Vec<u8> {
    let mut v = Vec::new();
    fs.root_dir().open_file(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn names(dir: fatfs::Dir<'_, RoImage>) -> Vec<String> {
    let mut v: Vec<String> = dir
        .iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    v.sort();
    v
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn nocloud_image_reads_back() {
    let d = tmpdir();
    let img = d.path().join("nocloud.img");
    let mut src = inline(SCRIPT);
    src.network_data = Some("version: 2\nethernets: {}\n".into());
    write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len(), 2 << 20);
    let fs = open(&bytes);
    assert_eq!(fs.volume_label(), "cidata");
    assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some("cidata"));
    assert_eq!(names(fs.root_dir()), ["meta-data", "network-config", "user-data"]);
    assert_eq!(
        String::from_utf8(read(&fs, "meta-data")).unwrap(),
        "instance-id: \"testvm.default\"\nlocal-hostname: \"testvm\"\n"
    );
    assert_eq!(read(&fs, "user-data"), SCRIPT.as_bytes());
    assert_eq!(read(&fs, "network-config"), b"version: 2\nethernets: {}\n");
    // Private to its owner, no temporary file left behind.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&img).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn config_drive_image_reads_back() {
    let d = tmpdir();
    let img = d.path().join("configdrive.img");
    let src = CloudInitSource {
        user_data_base64: Some(LENIENT_BASE64.encode(SCRIPT)),
        network_data_base64: Some(LENIENT_BASE64.encode(r#"{"links":[]}"#)),
        ..Default::default()
    };
    let i = info().with_uuid("5D307CA9-B3EF-428C-8861-06E72D69F223");
    write_config_drive("cloudinitdisk", &src, &i, &img).unwrap();
    let fs = open(&std::fs::read(&img).unwrap());
    assert_eq!(fs.volume_label(), "config-2");
    assert_eq!(names(fs.root_dir()), ["openstack"]);
    assert_eq!(names(fs.root_dir().open_dir("openstack").unwrap()), ["latest"]);
    assert_eq!(
        names(fs.root_dir().open_dir("openstack/latest").unwrap()),
        ["meta_data.json", "network_data.json", "user_data"]
    );
    assert_eq!(
        String::from_utf8(read(&fs, "openstack/latest/meta_data.json")).unwrap(),
        r#"{"instance_id":"testvm.default","hostname":"testvm","uuid":"5D307CA9-B3EF-428C-8861-06E72D69F223"}"#
    );
    assert_eq!(read(&fs, "openstack/latest/user_data"), SCRIPT.as_bytes());
    assert_eq!(read(&fs, "openstack/latest/network_data.json"), br#"{"links":[]}"#);
}

#[test]
fn same_input_same_bytes_and_rewrite_replaces() {
    let d = tmpdir();
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    for kind in [SeedKind::NoCloud, SeedKind::ConfigDrive] {
        let w = |p: &Path, s: &str| match kind {
            SeedKind::NoCloud => write_nocloud("v", &inline(s), &info(), p),
            SeedKind::ConfigDrive => write_config_drive("v", &inline(s), &info(), p),
        };
        w(&a, SCRIPT).unwrap();
        w(&b, SCRIPT).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{kind}");
        // Written again over an existing file: replaced, not appended to.
        w(&b, "#cloud-config\n").unwrap();
        let fs = open(&std::fs::read(&b).unwrap());
        let path = if kind == SeedKind::NoCloud { "user-data" } else { "openstack/latest/user_data" };
        assert_eq!(read(&fs, path), b"#cloud-config\n");
    }
    // Another instance: another volume serial.
    write_nocloud("v", &inline(SCRIPT), &SeedInfo::new("other.default", "other"), &b).unwrap();
    write_nocloud("v", &inline(SCRIPT), &info(), &a).unwrap();
    assert_ne!(open(&std::fs::read(&a).unwrap()).volume_id(), open(&std::fs::read(&b).unwrap()).volume_id());
}

/// The raw 11-byte names and attributes of the first `n` slots of the directory at `cluster`.
fn raw_slots(img: &[u8], cluster: usize, n: usize) -> Vec<(Vec<u8>, u8)> {
    let g = Geometry::read(img).unwrap();
    let start = g.data + (cluster - 2) * g.cluster;
    (0..n).map(|i| start + i * DIR_ENTRY).map(|o| (img[o..o + 11].to_vec(), img[o + 11])).collect()
}

/// The first cluster of the first subdirectory in the slots from `start` (`.` and `..` aside).
fn first_subdir(img: &[u8], start: usize, len: usize) -> usize {
    (start..start + len)
        .step_by(DIR_ENTRY)
        .find(|o| img[*o] != b'.' && img[*o] != DELETED && img[*o + 11] == ATTR_DIRECTORY)
        .map(|o| usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])))
        .expect("a subdirectory")
}

#[test]
fn dot_entries_come_first_in_every_directory() {
    let data = SeedData { user_data: SCRIPT.into(), network_data: None };
    let img = build_image(SeedKind::ConfigDrive, &data, &info(), Path::new("x")).unwrap();
    let g = Geometry::read(&img).unwrap();
    let openstack = first_subdir(&img, g.root, g.root_len);
    let latest = first_subdir(&img, g.data + (openstack - 2) * g.cluster, g.cluster);
    for (dir, parent) in [(openstack, 0), (latest, openstack)] {
        let slots = raw_slots(&img, dir, 4);
        assert_eq!(slots[0], (b".          ".to_vec(), ATTR_DIRECTORY));
        assert_eq!(slots[1], (b"..         ".to_vec(), ATTR_DIRECTORY));
        assert_eq!(slots[2].0[0], DELETED);
        assert_eq!(slots[3].0[0], DELETED);
        let o = g.data + (dir - 2) * g.cluster;
        assert_eq!(usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])), dir, "'.' points to itself");
        let o = o + DIR_ENTRY;
        assert_eq!(usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])), parent, "'..' to the parent");
    }
    // Garbage is refused, not a panic.
    assert!(fix_dot_entries(&mut [0u8; 100]).is_err());
    assert!(fix_dot_entries(&mut vec![0u8; 4096]).is_err());
    let mut cut = img[..64 * 1024].to_vec();
    assert!(fix_dot_entries(&mut cut).is_err());
}

#[test]
fn public_keys_go_into_both_metadata_kinds() {
    let keys = vec!["ssh-ed25519 AAAAC3Nza me@host".to_string(), "ssh-rsa AAAAB3 \"quoted\"".to_string()];
    let info = info().with_public_keys(keys.clone());
    let data = SeedData { user_data: b"#cloud-config\n".to_vec(), network_data: None };
    let files = seed_files(SeedKind::NoCloud, &data, &info);
    let meta = String::from_utf8(files[0].1.clone()).unwrap();
    assert!(
        meta.ends_with(
            "public-keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host\"\n  - \"ssh-rsa AAAAB3 \\\"quoted\\\"\"\n"
        ),
        "{meta}"
    );
    let files = seed_files(SeedKind::ConfigDrive, &data, &info);
    let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(meta["public_keys"]["0"], keys[0]);
    assert_eq!(meta["public_keys"]["1"], keys[1]);
    for bad in ["", "ssh-rsa AAAA\nssh-rsa BBBB"] {
        let e = self::info().with_public_keys(vec![bad.into()]).check().unwrap_err().to_string();
        assert!(e.contains("public_keys"), "{e}");
    }
}

#[test]
fn derived_uuid_is_stable_and_well_formed() {
    let u = derived_uuid("testvm.default");
    assert!(is_uuid(&u), "{u}");
    assert_eq!(&u[14..15], "8");
    assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    assert_eq!(u, derived_uuid("testvm.default"));
    assert_ne!(u, derived_uuid("testvm.other"));
}

#[test]
fn for_vmi_follows_kubevirt() {
    let mut spec = VirtualMachineInstanceSpec::default();
    let i = SeedInfo::for_vmi("testvm", "ns1", &spec);
    assert_eq!(
        i,
        SeedInfo {
            instance_id: "testvm.ns1".into(),
            hostname: "testvm".into(),
            uuid: None,
            public_keys: Vec::new()
        }
    );
    spec.hostname = Some("h".repeat(70));
    spec.domain.firmware = Some(Box::new(virt_core::model::Firmware {
        uuid: Some("5d307ca9-b3ef-428c-8861-06e72d69f223".into()),
        ..Default::default()
    }));
    let i = SeedInfo::for_vmi("testvm", "ns1", &spec);
    assert_eq!(i.hostname, "h".repeat(63));
    assert_eq!(i.uuid.as_deref(), Some("5d307ca9-b3ef-428c-8861-06e72d69f223"));
}

#[test]
fn base64_is_decoded_leniently_like_the_validator() {
    let enc = LENIENT_BASE64.encode("#cloud-config\nhostname: x\n");
    let unpadded = enc.trim_end_matches('=');
    let wrapped: String =
        enc.chars().collect::<Vec<_>>().chunks(8).map(|c| c.iter().collect::<String>() + "\n").collect();
    for form in [enc.as_str(), unpadded, wrapped.as_str()] {
        let src = CloudInitSource { user_data_base64: Some(form.into()), ..Default::default() };
        let data = SeedData::from_source("v", &src).unwrap();
        assert_eq!(data.user_data, b"#cloud-config\nhostname: x\n", "{form:?}");
    }
}

fn err(src: CloudInitSource) -> String {
    let d = tmpdir();
    let img = d.path().join("x.img");
    let e = write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap_err().to_string();
    assert!(!img.exists(), "nothing is written on error");
    e
}

#[test]
fn bad_input_is_refused_by_field() {
    let e = err(CloudInitSource { user_data_base64: Some("not base64!".into()), ..Default::default() });
    assert!(e.contains("\"cloudinitdisk\": userDataBase64: not valid base64"), "{e}");
    let e = err(CloudInitSource {
        user_data: Some("x".into()),
        network_data_base64: Some("%%%%".into()),
        ..Default::default()
    });
    assert!(e.contains("networkDataBase64: not valid base64"), "{e}");

    let secret = Some(LocalObjectReference { name: Some("my-secret".into()) });
    let e = err(CloudInitSource { user_data_secret_ref: secret.clone(), ..Default::default() });
    assert_eq!(
            e,
            "cloud-init volume \"cloudinitdisk\": secretRef: the Secret was not resolved (the node reads it before \
             writing the seed); \
             put the data inline in userData or userDataBase64"
        );
    let e = err(CloudInitSource {
        user_data: Some("x".into()),
        network_data_secret_ref: secret,
        ..Default::default()
    });
    assert!(e.contains("networkDataSecretRef: the Secret was not resolved"), "{e}");
    assert!(e.contains("put the data inline in networkData or networkDataBase64"), "{e}");

    let e = err(CloudInitSource::default());
    assert!(e.contains("\"cloudinitdisk\": no user data: set userData or userDataBase64"), "{e}");

    let e = err(CloudInitSource {
        user_data: Some("x".into()),
        user_data_base64: Some("eA==".into()),
        ..Default::default()
    });
    assert!(e.contains("set only one of userData, userDataBase64"), "{e}");

    let big = "x".repeat(MAX_DATA_LEN + 1);
    let e = err(inline(&big));
    assert!(
        e.contains(&format!("userData: {} bytes, more than the {MAX_DATA_LEN} bytes", MAX_DATA_LEN + 1)),
        "{e}"
    );
    let e =
        err(CloudInitSource { user_data_base64: Some(LENIENT_BASE64.encode(&big)), ..Default::default() });
    assert!(e.contains("userDataBase64: 1048577 bytes, more than"), "{e}");
    // Absurd sizes are refused before decoding.
    let e = err(CloudInitSource { user_data_base64: Some("A".repeat(64 << 20)), ..Default::default() });
    assert!(e.contains("userDataBase64: 50331648 bytes, more than"), "{e}");
}

#[test]
fn network_data_alone_gives_an_empty_user_data_file() {
    let src = CloudInitSource { network_data: Some("version: 2\n".into()), ..Default::default() };
    let data = SeedData::from_source("v", &src).unwrap();
    let fs = open(&build_image(SeedKind::NoCloud, &data, &info(), Path::new("x")).unwrap());
    assert_eq!(read(&fs, "user-data"), b"");
    assert_eq!(read(&fs, "network-config"), b"version: 2\n");
}

#[test]
fn bad_metadata_is_refused() {
    let data = SeedData { user_data: b"x".to_vec(), network_data: None };
    for (i, want) in [
        (SeedInfo::new("", "h"), "instance_id \"\": must be 1 to 512 bytes"),
        (SeedInfo::new("a\"b", "h"), "instance_id \"a\\\"b\": may hold only"),
        (SeedInfo::new("a.b", "h\nx"), "hostname \"h\\nx\": may hold only"),
        (SeedInfo::new("a.b", "h".repeat(64)), "must be 1 to 63 bytes"),
        (SeedInfo::new("a.b", "h").with_uuid("nope"), "uuid \"nope\": is not a UUID"),
    ] {
        let e = build_image(SeedKind::ConfigDrive, &data, &i, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn write_seed_dispatches_on_the_volume_kind() {
    let d = tmpdir();
    let img = d.path().join("seed.img");
    let mut v = Volume { name: "cloudinitdisk".into(), ..Default::default() };
    let e = write_seed(&v, &info(), &img).unwrap_err().to_string();
    assert!(e.contains("\"cloudinitdisk\" is not a cloud-init volume"), "{e}");
    v.cloud_init_config_drive = Some(inline(SCRIPT));
    assert_eq!(write_seed(&v, &info(), &img).unwrap(), SeedKind::ConfigDrive);
    assert_eq!(open(&std::fs::read(&img).unwrap()).volume_label(), "config-2");
    v.cloud_init_config_drive = None;
    v.cloud_init_no_cloud = Some(inline(SCRIPT));
    assert_eq!(write_seed(&v, &info(), &img).unwrap(), SeedKind::NoCloud);
    assert_eq!(open(&std::fs::read(&img).unwrap()).volume_label(), "cidata");
}

#[test]
fn the_largest_payload_fits() {
    let data = SeedData { user_data: vec![b'u'; MAX_DATA_LEN], network_data: Some(vec![b'n'; MAX_DATA_LEN]) };
    for kind in [SeedKind::NoCloud, SeedKind::ConfigDrive] {
        let img = build_image(kind, &data, &info(), Path::new("x")).unwrap();
        assert_eq!(img.len(), 4 << 20);
        let fs = open(&img);
        let p = if kind == SeedKind::NoCloud { "user-data" } else { "openstack/latest/user_data" };
        assert_eq!(read(&fs, p).len(), MAX_DATA_LEN);
    }
    // More, handed to build_image directly, is refused all the same.
    let data = SeedData { user_data: vec![b'u'; MAX_DATA_LEN + 1], network_data: None };
    let e = build_image(SeedKind::NoCloud, &data, &info(), Path::new("/x/seed.img")).unwrap_err();
    assert!(e.to_string().contains("/x/seed.img: user-data: 1048577 bytes, more than"), "{e}");
    // Every size in between formats and fits.
    for n in (0..=MAX_DATA_LEN).step_by(97 * 1024) {
        let data = SeedData { user_data: vec![b'u'; n], network_data: Some(vec![b'n'; n]) };
        let fs = open(&build_image(SeedKind::NoCloud, &data, &info(), Path::new("x")).unwrap());
        assert_eq!(read(&fs, "network-config").len(), n);
    }
}

#[test]
fn a_missing_directory_is_an_io_error_naming_the_path() {
    let d = tmpdir();
    let img = d.path().join("no/such/dir/seed.img");
    let e = write_nocloud("v", &inline(SCRIPT), &info(), &img).unwrap_err().to_string();
    assert!(e.contains("no/such/dir/seed.img: creating a temporary file in its directory"), "{e}");
}

// --- the real tools, when installed (scripts/install-deps.sh installs dosfstools and mtools) ---

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "{name} not installed: skipping its checks (scripts/install-deps.sh installs it)"
        );
        eprintln!("{name} not installed: skipping its checks (scripts/install-deps.sh installs it)");
    }
    found
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

fn check_with_tools(img: &Path, label: &str, files: &[(&str, &[u8])]) {
    let p = img.to_str().unwrap();
    if tool("fsck.fat") {
        let (ok, out) = run("fsck.fat", &["-n", p]);
        assert!(ok, "fsck.fat -n {p}:\n{out}");
        assert!(
            !out.to_lowercase().contains("differ") && !out.contains("Leaving filesystem unchanged"),
            "{out}"
        );
        eprintln!("fsck.fat -n: {}", out.trim().replace('\n', " | "));
    }
    if tool("mdir") && tool("mtype") {
        for (path, content) in files {
            let dir = match path.rsplit_once('/') {
                Some((d, _)) => format!("::/{d}"),
                None => "::/".into(),
            };
            let (ok, out) = run("mdir", &["-i", p, &dir]);
            assert!(ok, "mdir {dir}:\n{out}");
            let base = path.rsplit('/').next().unwrap();
            assert!(out.contains(base), "mdir {dir} does not list {base}:\n{out}");
            let o = Command::new("mtype")
                .args(["-i", p, &format!("::/{path}")])
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap();
            assert!(o.status.success(), "mtype {path}: {}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(o.stdout, *content, "mtype {path}");
        }
    }
    if tool("blkid") {
        let (ok, out) = run("blkid", &["-p", "-o", "export", p]);
        assert!(ok, "blkid {p}:\n{out}");
        assert!(out.contains(&format!("LABEL={label}\n")), "blkid:\n{out}");
        assert!(out.contains("TYPE=vfat"), "blkid:\n{out}");
    }
    if tool("file") {
        let (ok, out) = run("file", &[p]);
        assert!(ok);
        assert!(out.contains(&format!("label: \"{label:<11}\"")), "file:\n{out}");
    }
}

#[test]
fn real_tools_accept_the_nocloud_image() {
    let d = tmpdir();
    let img = d.path().join("nocloud.img");
    let mut src = inline(SCRIPT);
    src.network_data = Some("version: 2\n".into());
    write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap();
    let meta = b"instance-id: \"testvm.default\"\nlocal-hostname: \"testvm\"\n";
    check_with_tools(
        &img,
        "cidata",
        &[("meta-data", meta), ("user-data", SCRIPT.as_bytes()), ("network-config", b"version: 2\n")],
    );
}

#[test]
fn real_tools_accept_the_config_drive_image() {
    let d = tmpdir();
    let img = d.path().join("configdrive.img");
    let src = CloudInitSource {
        user_data: Some(SCRIPT.into()),
        network_data: Some(r#"{"links":[]}"#.into()),
        ..Default::default()
    };
    write_config_drive("cloudinitdisk", &src, &info(), &img).unwrap();
    let meta = format!(
        r#"{{"instance_id":"testvm.default","hostname":"testvm","uuid":"{}"}}"#,
        derived_uuid("testvm.default")
    );
    check_with_tools(
        &img,
        "config-2",
        &[
            ("openstack/latest/meta_data.json", meta.as_bytes()),
            ("openstack/latest/user_data", SCRIPT.as_bytes()),
            ("openstack/latest/network_data.json", br#"{"links":[]}"#),
        ],
    );
}
