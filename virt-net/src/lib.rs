//! Networking layer: tap, bridge, masquerade and addresses for virtio-net (not built yet).
