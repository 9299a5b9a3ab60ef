//! Restore time and live-migration downtime of the native VMM, with the counter guest of the tests
//! on this machine's /dev/kvm. Prints a table in Markdown beside the anchors' published figures.
//!
//! `cargo run --release -p virt-core --example snapshot_bench [-- runs]`

#[path = "../tests/support/tiny.rs"]
mod tiny;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tiny::{assemble, counter_config, Console, COUNTER_GUEST};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::migration::MigrationOptions;
use virt_core::vmm::MicroVm;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let hv = KvmHypervisor::new().expect("/dev/kvm");
    let img = assemble("bench", COUNTER_GUEST);
    println!("| guest memory | snapshot (pause+state+memory) | restore (build+map+state) | restore to first heartbeat |");
    println!("| --- | --- | --- | --- |");
    for mib in [32u64, 128, 512] {
        let dir = std::env::temp_dir().join(format!("snapbench-{}-{mib}", std::process::id()));
        let (mut snap, mut restore, mut first) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let con = Console::default();
            let h = MicroVm::new(&hv, counter_config(img.clone(), &con, mib)).unwrap().start().unwrap();
            con.wait_beats(2);
            let t = Instant::now();
            h.snapshot(&dir).unwrap();
            snap.push(t.elapsed());
            h.request_stop();
            h.wait();
            drop(h);
            let con2 = Console::default();
            let t = Instant::now();
            let vm = MicroVm::restore(&hv, counter_config(img.clone(), &con2, mib), &dir).unwrap();
            let h2 = vm.start().unwrap();
            restore.push(t.elapsed());
            con2.wait_beats(1);
            first.push(t.elapsed());
            h2.request_stop();
            h2.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!("| {mib} MiB | {} | {} | {} |", ms(median(snap)), ms(median(restore)), ms(median(first)));
    }
    println!("\nFirecracker's published target: snapshot restore < 8 ms.\n");

    println!("| guest memory | total | downtime | of it: save state | final pass | dest restore | passes | pages per pass |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for mib in [32u64, 128, 512] {
        let mut results = Vec::new();
        for _ in 0..runs {
            let con = Console::default();
            let h = MicroVm::new(&hv, counter_config(img.clone(), &con, mib)).unwrap().start().unwrap();
            con.wait_beats(2);
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let img2 = img.clone();
            let dest = std::thread::spawn(move || {
                let hv = KvmHypervisor::new().expect("/dev/kvm");
                let con2 = Console::default();
                let (h2, _) = MicroVm::migrate_from(&hv, counter_config(img2, &con2, mib), &mut b).unwrap();
                con2.wait_beats(1);
                h2.request_stop();
                h2.wait();
            });
            let s = h.migrate_to(&mut a, &MigrationOptions::default()).unwrap();
            dest.join().unwrap();
            results.push(s);
        }
        results.sort_by_key(|s| s.downtime);
        let s = &results[results.len() / 2];
        println!(
            "| {mib} MiB | {} | {} | {} | {} | {} | {} | {:?} |",
            ms(s.total),
            ms(s.downtime),
            ms(s.save_state),
            ms(s.final_pass),
            ms(s.restore),
            s.passes,
            s.pages_per_pass
        );
    }
    println!("\nQEMU's default downtime budget (downtime-limit): 300 ms.");
}
