//! Generates the kubelet device plugin API (gRPC server and client) from `proto/v1beta1/api.proto`
//! with a pure-Rust protobuf compiler, so that no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/v1beta1/api.proto");
    let descriptors = protox::compile(["v1beta1/api.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
