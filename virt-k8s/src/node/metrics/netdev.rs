//! Per-interface network figures of a VM: its taps' counters from `/proc/net/dev` of the VMI's
//! network namespace, turned to the guest's side as libvirt (and so KubeVirt) reports them: what
//! the tap transmits the guest receives.

use std::collections::BTreeMap;

/// The counters of one guest interface, from the guest's side.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NetStats {
    /// The VMI's interface name (`spec.domain.devices.interfaces[].name`).
    pub interface: String,
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Packets the guest received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets dropped on the way to the guest.
    pub rx_dropped: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets the guest sent that were dropped.
    pub tx_dropped: u64,
}

/// The host-side counters of each device in a `/proc/net/dev` text: receive bytes, packets, errs,
/// drop (0-3) and transmit bytes, packets, errs, drop (8-11), as the kernel prints them. Lines
/// that do not parse (the two headers) are left out.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, [u64; 16]> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((dev, rest)) = line.split_once(':') else { continue };
        let nums: Vec<u64> = rest.split_whitespace().map_while(|v| v.parse().ok()).collect();
        let Ok(nums) = <[u64; 16]>::try_from(nums) else { continue };
        out.insert(dev.trim().to_string(), nums);
    }
    out
}

/// The guest-side figures of `taps` (interface name, tap device) in a `/proc/net/dev` text; a tap
/// that is not there is left out.
pub fn guest_net_stats(net_dev: &str, taps: &[(String, String)]) -> Vec<NetStats> {
    let devs = parse_net_dev(net_dev);
    taps.iter()
        .filter_map(|(iface, tap)| {
            let c = devs.get(tap)?;
            // The tap's transmit side is the guest's receive side, and the other way round.
            Some(NetStats {
                interface: iface.clone(),
                rx_bytes: c[8],
                rx_packets: c[9],
                rx_errors: c[10],
                rx_dropped: c[11],
                tx_bytes: c[0],
                tx_packets: c[1],
                tx_errors: c[2],
                tx_dropped: c[3],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  tap0:    1500      12    1    2    0     0          0         0     9000      30    3    4    0     0       0          0
k6t-tap0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
";

    #[test]
    fn net_dev_parses_and_taps_turn_to_the_guest_side() {
        let devs = parse_net_dev(NET_DEV);
        assert_eq!(devs.len(), 3, "{devs:?}");
        assert_eq!(devs["tap0"][0], 1500);
        let s =
            guest_net_stats(NET_DEV, &[("default".into(), "tap0".into()), ("gone".into(), "tap9".into())]);
        assert_eq!(
            s,
            vec![NetStats {
                interface: "default".into(),
                rx_bytes: 9000,
                rx_packets: 30,
                rx_errors: 3,
                rx_dropped: 4,
                tx_bytes: 1500,
                tx_packets: 12,
                tx_errors: 1,
                tx_dropped: 2,
            }]
        );
    }

    #[test]
    fn this_namespace_reads() {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        assert!(parse_net_dev(&text).contains_key("lo"), "{text}");
    }
}
