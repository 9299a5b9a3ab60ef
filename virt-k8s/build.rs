//! Generates the kubelet device plugin API's gRPC services (k8s.io/kubelet
//! pkg/apis/deviceplugin/v1beta1: `Registration`, `DevicePlugin`) with tonic-build's manual
//! builder: the messages are prost structs written by hand in `src/cluster/device_plugin/api.rs`,
//! so no `protoc` is needed on a fresh machine.

use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str, streaming: bool) -> Method {
    let b = Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("super::{input}"))
        .output_type(format!("super::{output}"))
        .codec_path("tonic_prost::ProstCodec");
    if streaming { b.server_streaming() } else { b }.build()
}

fn main() {
    let registration = Service::builder()
        .name("Registration")
        .package("v1beta1")
        .method(method("register", "Register", "RegisterRequest", "Empty", false))
        .build();
    let plugin = Service::builder()
        .name("DevicePlugin")
        .package("v1beta1")
        .method(method(
            "get_device_plugin_options",
            "GetDevicePluginOptions",
            "Empty",
            "DevicePluginOptions",
            false,
        ))
        .method(method("list_and_watch", "ListAndWatch", "Empty", "ListAndWatchResponse", true))
        .method(method(
            "get_preferred_allocation",
            "GetPreferredAllocation",
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            false,
        ))
        .method(method("allocate", "Allocate", "AllocateRequest", "AllocateResponse", false))
        .method(method(
            "pre_start_container",
            "PreStartContainer",
            "PreStartContainerRequest",
            "PreStartContainerResponse",
            false,
        ))
        .build();
    Builder::new().build_transport(false).compile(&[registration, plugin]);
    println!("cargo:rerun-if-changed=build.rs");
}
