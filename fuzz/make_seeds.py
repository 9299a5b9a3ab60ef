#!/usr/bin/env python3
"""Writes the committed seeds of the fuzz targets (fuzz/seeds/TARGET/*) that are not images or
regression inputs. Run from anywhere: python3 fuzz/make_seeds.py. Regression seeds (inputs that
crashed once) are committed by hand and never rewritten here."""
import base64, gzip, io, json, lzma, os, struct, subprocess, tarfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- virtio_blk: 9-byte header, then guest memory from address 0 ----
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8


def blk(chains, flags=0, qsize=16, reqs=(), extra=()):
    """chains: list of descriptor lists [(addr, len, flags, next)] placed at table index given."""
    mem = bytearray(0x1000)
    desc, avail, used = 0x0, 0x100, 0x200
    heads = []
    for idx, descs in chains:
        heads.append(idx)
        for i, (a, l, f, n) in enumerate(descs):
            struct.pack_into("<QIHH", mem, desc + 16 * (idx + i), a, l, f, n)
    struct.pack_into("<HH", mem, avail, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, avail + 4 + 2 * i, h)
    for addr, kind, sector in reqs:
        struct.pack_into("<IIQ", mem, addr, kind, 0, sector)
    for addr, data in extra:
        if addr + len(data) > len(mem):
            mem.extend(bytes(addr + len(data) - len(mem)))
        mem[addr:addr + len(data)] = data
    hdr = struct.pack("<BHHHH", flags, qsize, desc // 16, avail // 2, used // 4)
    return hdr + bytes(mem)


put("virtio_blk", "read", blk([(0, [(0x400, 16, NEXT, 1), (0x800, 512, WRITE | NEXT, 2), (0xa00, 1, WRITE, 0)])],
                              reqs=[(0x400, T_IN, 1)]))
put("virtio_blk", "write", blk([(0, [(0x400, 16, NEXT, 1), (0x800, 1024, NEXT, 2), (0xa00, 1, WRITE, 0)])],
                               reqs=[(0x400, T_OUT, 3)], extra=[(0x800, b"\x5a" * 1024)]))
put("virtio_blk", "flush-and-id", blk(
    [(0, [(0x400, 16, NEXT, 1), (0xa00, 1, WRITE, 0)]),
     (4, [(0x410, 16, NEXT, 5), (0x800, 20, WRITE | NEXT, 6), (0xa01, 1, WRITE, 0)])],
    reqs=[(0x400, T_FLUSH, 0), (0x410, T_GET_ID, 0)]))
put("virtio_blk", "indirect", blk([(0, [(0xc00, 48, INDIRECT, 0)])], reqs=[(0x400, T_IN, 0)],
                                  extra=[(0xc00, struct.pack("<QIHHQIHHQIHH", 0x400, 16, NEXT, 1, 0x800, 512,
                                                             WRITE | NEXT, 2, 0xa00, 1, WRITE, 0))]))
put("virtio_blk", "event-idx", blk([(0, [(0x400, 16, NEXT, 1), (0x800, 512, WRITE | NEXT, 2), (0xa00, 1, WRITE, 0)])],
                                   flags=1, reqs=[(0x400, T_IN, 0)]))
put("virtio_blk", "read-only-write", blk([(0, [(0x400, 16, NEXT, 1), (0x800, 512, NEXT, 2), (0xa00, 1, WRITE, 0)])],
                                         flags=2, reqs=[(0x400, T_OUT, 0)]))
put("virtio_blk", "across-the-hole", blk([(0, [(0x400, 16, NEXT, 1), (0xfe00, 0x1400, WRITE | NEXT, 2), (0xa00, 1, WRITE, 0)])],
                                         reqs=[(0x400, T_IN, 0)]))

# ---- kubevirt_manifest ----
VMI = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: testvmi
  namespace: default
spec:
  domain:
    cpu: {sockets: 1, cores: 2, threads: 1}
    devices:
      disks:
      - name: containerdisk
        disk: {bus: virtio}
      - name: cloudinitdisk
        disk: {bus: virtio}
      interfaces:
      - name: default
        masquerade: {}
    memory:
      guest: 128Mi
    firmware:
      uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223
  networks:
  - name: default
    pod: {}
  volumes:
  - name: containerdisk
    containerDisk:
      image: quay.io/containerdisks/cirros:0.6
  - name: cloudinitdisk
    cloudInitNoCloud:
      userDataBase64: I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogY2lycm9zCg==
"""
CATALOG = """apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata:
  name: u1.small
spec:
  cpu:
    guest: 1
  memory:
    guest: 2Gi
---
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterPreference
metadata:
  name: fedora
spec:
  devices:
    preferredDiskBus: virtio
    preferredInterfaceModel: virtio
  firmware:
    preferredUseEfi: true
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: fedora
spec:
  runStrategy: Always
  instancetype:
    name: u1.small
  preference:
    name: fedora
  dataVolumeTemplates:
  - metadata:
      name: fedora-root
    spec:
      sourceRef:
        kind: DataSource
        name: fedora
        namespace: openshift-virtualization-os-images
      storage:
        resources:
          requests:
            storage: 30Gi
  template:
    spec:
      domain:
        devices: {}
      volumes:
      - name: rootdisk
        dataVolume:
          name: fedora-root
"""
put("kubevirt_manifest", "vm-demo.yaml", open(os.path.join(ROOT, "..", "..", "examples", "vm-demo.yaml")).read())
put("kubevirt_manifest", "vmi.yaml", VMI)
put("kubevirt_manifest", "instancetype-and-vm.yaml", CATALOG)
VM_JSON = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
    "metadata": {"name": "vm-json", "labels": {"app": "x"}},
    "spec": {"runStrategy": "Halted", "template": {"spec": {
        "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "d", "cdrom": {"bus": "sata"}}],
                   "tpm": {}}, "features": {"acpi": {}, "smm": {"enabled": True}},
                   "firmware": {"bootloader": {"efi": {"secureBoot": True}}}},
        "volumes": [{"name": "d", "hostDisk": {"path": "/var/lib/x.img", "type": "DiskOrCreate", "capacity": "1Gi"}}]}}},
}
put("kubevirt_manifest", "vm.json", json.dumps(VM_JSON))
put("kubevirt_manifest", "kernel-boot-vmi.yaml", """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: kb}
spec:
  domain:
    firmware:
      kernelBoot:
        kernelArgs: "console=ttyS0,115200 root=/dev/vda"
        container: {image: "registry:5000/k:latest", kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd}
    resources: {requests: {memory: 1Gi}}
    clock: {utc: {offsetSeconds: 3600}, timer: {hpet: {present: false}}}
    devices:
      disks: [{name: a, disk: {bus: sata}, bootOrder: 1}, {name: b, lun: {}}]
      autoattachGraphicsDevice: false
  volumes:
  - {name: a, emptyDisk: {capacity: 2Gi}}
  - {name: b, persistentVolumeClaim: {claimName: "my,claim"}}
""")

# ---- cdi_manifest ----
DV = """apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: cirros
spec:
  source:
    http:
      url: https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img
  storage:
    accessModes: [ReadWriteOnce]
    resources:
      requests:
        storage: 500Mi
"""
put("cdi_manifest", "datavolume-http.yaml", DV)
put("cdi_manifest", "sources.yaml", """apiVersion: cdi.kubevirt.io/v1beta1
kind: DataSource
metadata: {name: fedora, namespace: os-images}
spec:
  source:
    pvc: {name: fedora-40, namespace: os-images}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataImportCron
metadata: {name: fedora-cron, namespace: os-images}
spec:
  schedule: "30 */12 * * 1-5"
  garbageCollect: Outdated
  importsToKeep: 2
  managedDataSource: fedora
  template:
    spec:
      source:
        registry: {url: "docker://quay.io/containerdisks/fedora:latest", pullMethod: node}
      storage: {resources: {requests: {storage: 5Gi}}}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: StorageProfile
metadata: {name: local}
spec:
  claimPropertySets:
  - accessModes: [ReadWriteOnce]
    volumeMode: Filesystem
  cloneStrategy: snapshot
""")
put("cdi_manifest", "datavolume.json", json.dumps({
    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
    "metadata": {"name": "blank", "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}},
    "spec": {"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
             "contentType": "kubevirt"}}))
put("cdi_manifest", "vm-with-templates.yaml", CATALOG.split("---\n")[2])

# ---- rest_body: byte 0 endpoint (| 0x80 for YAML), then the body ----
VM_YAML = open(os.path.join(ROOT, "..", "..", "examples", "vm-demo.yaml")).read()
put("rest_body", "create-vm.json", b"\x00" + json.dumps(VM_JSON).encode())
put("rest_body", "create-vm.yaml", b"\x80" + VM_YAML.encode())
put("rest_body", "replace-vm.yaml", b"\x81" + VM_YAML.encode())
put("rest_body", "create-vmi.yaml", b"\x82" + VMI.encode())
put("rest_body", "create-instancetype.yaml", b"\x83" + CATALOG.split("---\n")[0].encode())
put("rest_body", "create-namespace.json", b"\x04" + json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}).encode())
put("rest_body", "stop-options.json", b"\x05" + b'{"gracePeriod": 30}')
put("rest_body", "create-datavolume.yaml", b"\x86" + DV.encode())
put("rest_body", "upload-token.json", b"\x07" + json.dumps({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                                                            "metadata": {"name": "t", "namespace": "default"}, "spec": {"pvcName": "cirros"}}).encode())
put("rest_body", "volume-snapshot.json", b"\x08" + json.dumps({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                                               "metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "cirros"}}}).encode())

# ---- cloudinit_seed: flags 0xff user 0xff network 0xff instance-id 0xff hostname 0xff uuid ----
def ci(flags, user, net, iid, host, uuid=b""):
    return b"\xff".join([bytes([flags]), user, net, iid, host, uuid])


put("cloudinit_seed", "plain", ci(0, b"#cloud-config\npassword: fedora\nchpasswd: {expire: false}\n",
                                  b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n", b"vm1.default", b"vm1"))
put("cloudinit_seed", "base64", ci(3, base64.b64encode(b"#!/bin/sh\necho hi\n"), base64.b64encode(b'{"links": []}'),
                                   b"vm2.ns", b"vm2.example.com"))
put("cloudinit_seed", "no-network-uuid", ci(4 | 8, b"#cloud-config\n", b"", b"id:1", b"h",
                                            b"5d307ca9-b3ef-428c-8861-06e72d69f223"))

# ---- oci_manifest: content type 0xff body 0xff WWW-Authenticate 0xff reference ----
D = lambda c: "sha256:" + (c * 64)
oci_index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D("1"), "size": 500,
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D("2"), "size": 501,
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D("3"), "size": 840,
     "platform": {"architecture": "unknown", "os": "unknown"}}]}
oci_manifest = {"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D("a"), "size": 2},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D("b"), "size": 1234}]}
docker = dict(oci_manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")


def om(ct, body, chal, ref):
    return b"\xff".join([ct.encode(), json.dumps(body).encode(), chal.encode(), ref.encode()])


put("oci_manifest", "index", om("application/vnd.oci.image.index.v1+json", oci_index,
                                'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"',
                                "docker://quay.io/containerdisks/fedora:40"))
put("oci_manifest", "manifest-by-header", om("application/vnd.oci.image.manifest.v1+json; charset=utf-8", oci_manifest,
                                             'Basic realm="Registry Realm"', "127.0.0.1:5000/virt-rs/demo-kernel@" + D("c")))
put("oci_manifest", "docker-v2", om("application/json", docker, 'Bearer realm="https://x/t"', "fedora"))

# ---- oci_layers: byte 0 selection (even: containerDisk, odd: boot files), layers split by ff 00 ff ----
def tar(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as t:
        for e in entries:
            kind, name = e[0], e[1]
            ti = tarfile.TarInfo(name)
            if kind == "f":
                ti.size = len(e[2])
                t.addfile(ti, io.BytesIO(e[2]))
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "s":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
                t.addfile(ti)
            elif kind == "h":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
                t.addfile(ti)
    return b.getvalue()


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True).stdout


SEP = b"\xff\x00\xff"
disk = tar([("d", "disk"), ("f", "disk/fedora.qcow2", b"QFI\xfb" + bytes(60))])
put("oci_layers", "containerdisk", b"\x00" + disk)
put("oci_layers", "containerdisk-gzip", b"\x00" + gzip.compress(disk, mtime=0))
put("oci_layers", "whiteouts", b"\x02" + tar([("f", "disk/old.img", b"old"), ("f", "etc/x", b"x")]) + SEP +
    gzip.compress(tar([("f", "disk/.wh..wh..opq", b""), ("f", "disk/new.img", b"new"), ("f", "etc/.wh.x", b"")]), mtime=0))
put("oci_layers", "kernel-links", b"\x01" + tar([("f", "usr/lib/vmlinuz-6", b"kernel"), ("h", "boot/vmlinuz", "usr/lib/vmlinuz-6"),
                                                 ("f", "real/initrd", b"initrd"), ("s", "boot/initrd", "../real/initrd")]))
put("oci_layers", "kernel-zstd", b"\x01" + zstd(tar([("f", "boot/vmlinuz", b"k" * 100), ("f", "boot/initrd", b"i" * 100)])))

# ---- qmp_stream: what QEMU sends; the client sends qmp_capabilities (id 0), query-status (1),
# query-vnc (2), human-monitor-command (3), stop (4) ----
G = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2"},
             "capabilities": ["oob"]}}
ev = lambda name, data=None: dict({"timestamp": {"seconds": 1733300000, "microseconds": 12345}, "event": name},
                                  **({"data": data} if data is not None else {}))
lines = [G, {"return": {}, "id": 0}, ev("STOP"), {"return": {"status": "paused", "singlestep": False, "running": False}, "id": 1},
         ev("VNC_CONNECTED", {"server": {"auth": "none", "family": "ipv4", "service": "5900", "host": "127.0.0.1", "websocket": False},
                              "client": {"family": "ipv4", "service": "46186", "host": "127.0.0.1", "websocket": False}}),
         {"return": {"enabled": True, "host": "127.0.0.1", "service": "5900", "family": "ipv4", "auth": "none", "clients": []}, "id": 2},
         {"return": "10.0.2\r\n", "id": 3}, {"error": {"class": "GenericError", "desc": "already stopped"}, "id": 4},
         ev("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}), ev("RESET", {"guest": False, "reason": "host-qmp-system-reset"}),
         ev("RTC_CHANGE", {"offset": -3600, "qom-path": "/machine/unattached/device[8]"}), ev("GUEST_PANICKED", {"action": "pause"}),
         ev("DEVICE_TRAY_MOVED", {"device": "ide0-cd0", "tray-open": True, "id": "cdrom"})]
put("qmp_stream", "session", "".join(json.dumps(l) + "\r\n" for l in lines))
put("qmp_stream", "greeting-only", json.dumps(G) + "\n" + json.dumps({"return": {}, "id": 0}) + "\n")
put("qmp_stream", "capabilities-refused", json.dumps(G) + "\n" + json.dumps({"error": {"class": "CommandNotFound", "desc": "no"}, "id": 0}) + "\n")

# ---- launcher_control: request lines (and answers a launcher may send) ----
put("launcher_control", "session", "\n".join([
    '{"op":"status"}', '{"op":"pause"}', '{"op":"pause"}', '{"op":"resume"}', '{"op":"powerDown"}', '{"op":"reset"}',
    '{"op":"consoleInput","data":"root\\n"}', '{"op":"consoleInput","bytes":[3,4,255]}', "   ", '{"op":"stop"}',
    '{"op":"stop"}', '{"op":"events"}', '{"op":"status"}']) + "\n")
put("launcher_control", "answers", "\n".join([
    '{"ok":true}', '{"ok":false,"error":"cannot pause while Paused","code":"state","state":"Paused"}',
    '{"ok":false,"error":"no","code":"unsupported","what":"reset"}',
    '{"ok":true,"name":"vm","status":"Running","accelerator":{"accelerator":"kvm","reason":"x"},"backend":"native","pid":7,"vncAddress":"127.0.0.1:5901"}',
    '"Started"', '{"Ended":{"Failed":"boom"}}', '"PowerOff"', 'not json', '{"op":"bogus"}']) + "\n")

# ---- image_probe: small images of each kind ----
raw = bytes(range(256)) * 8
put("image_probe", "raw", raw)
put("image_probe", "raw.gz", gzip.compress(raw, mtime=0))
put("image_probe", "raw.xz", lzma.compress(raw))
put("image_probe", "raw.zst", zstd(raw))
iso = bytearray(0x9000)
iso[0x8001:0x8006] = b"CD001"
put("image_probe", "iso", bytes(iso))
qc = open(os.path.join(ROOT, "qcow2_open", "v3-512.qcow2"), "rb").read()
put("image_probe", "v3-512.qcow2", qc)
put("image_probe", "qcow2.gz", gzip.compress(qc, mtime=0))
vhd = bytearray(2048)
vhd[-512:-504] = b"conectix"
put("image_probe", "fixed-vhd", bytes(vhd))

# ---- qga_reply: what a guest agent sends. The client's first sync carries id 1 (then 2, 3 after
# errors); a poll asks guest-info, guest-get-osinfo, guest-get-host-name, guest-get-timezone,
# guest-network-get-interfaces, guest-get-users, guest-get-fsinfo, guest-fsfreeze-status in that
# order; then freeze, thaw, shutdown (no answer on success), ping. Answers are those of Debian 12's
# qemu-ga 7.2. ----
def qga(*answers):
    out = b""
    for a in answers:
        out += a if isinstance(a, bytes) else (json.dumps(a) + "\n").encode()
    return out
SYNC1 = b"\xff" + b'{"return": 1}\n'
QGA_POLL = [
    {"return": {"version": "7.2.22", "supported_commands": [
        {"enabled": True, "name": "guest-ping", "success-response": True},
        {"enabled": False, "name": "guest-shutdown", "success-response": False}]}},
    {"return": {"name": "Debian GNU/Linux", "kernel-release": "6.1.0-18-amd64", "version": "12 (bookworm)",
                "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12",
                "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)", "machine": "x86_64", "id": "debian"}},
    {"return": {"host-name": "vm1"}},
    {"return": {"zone": "UTC", "offset": 0}},
    {"return": [{"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}],
                 "statistics": {"tx-packets": 0, "rx-bytes": 0}, "hardware-address": "00:00:00:00:00:00"},
                {"name": "enp1s0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
                                                    {"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456", "prefix": 64}],
                 "hardware-address": "52:54:00:12:34:56"}]},
    {"return": [{"user": "debian", "login-time": 1733300000.25}]},
    {"return": [{"name": "vda1", "total-bytes": 2040373248, "mountpoint": "/", "disk": [
        {"serial": "root", "bus-type": "virtio", "bus": 0, "unit": 0, "target": 0, "dev": "/dev/vda1",
         "pci-controller": {"bus": 0, "slot": 4, "domain": 0, "function": 0}}], "used-bytes": 1023410176, "type": "ext4"}]},
    {"return": "thawed"},
]
put("qga_reply", "poll", qga(SYNC1, *QGA_POLL, {"return": 1}, {"return": 1}, {"return": {}}))
put("qga_reply", "refusals", qga(SYNC1, *[{"error": {"class": "CommandNotFound", "desc": "Command has been disabled"}}] * 8))
put("qga_reply", "garbage-then-sync", qga(b"\x00garbage {\n", b'\xff{"return": 99}\n', {"return": 7}, SYNC1, *QGA_POLL))
put("qga_reply", "long-line-then-resync", qga(SYNC1, {"return": {"version": "x" * 5000}}, b'\xff{"return": 2}\n', *QGA_POLL[1:]))
put("qga_reply", "wrong-shapes", qga(SYNC1, {"return": [1]}, {"return": {"id": 5}}, b'\xff{"return": 2}\n', {"return": {"host-name": 3}}))
