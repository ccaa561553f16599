//! Generates the etcd v3 API code from `proto/` without a system `protoc`:
//! `protox` (a pure-Rust protobuf compiler) parses the `.proto` files into a
//! `FileDescriptorSet`, which `tonic-prost-build` turns into prost messages
//! plus tonic clients and servers in `OUT_DIR`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "proto/etcdserverpb/rpc.proto",
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/brainpb/brain.proto",
    "proto/engrampb/watch_encoded.proto",
    "proto/grpc/health/v1/health.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let fds = protox::compile(PROTOS, [Path::new(PROTO_ROOT)])?;
    write_methods(&fds)?;
    write_headers(&fds)?;
    if std::env::var_os("CARGO_FEATURE_JSON").is_some() {
        write_json(&fds)?;
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every `bytes` field becomes `bytes::Bytes`, so keys and values can
        // be shared with the storage layer without copying.
        .bytes(".")
        // Prost, with each message's buffer reserved at its size (see `src/codec.rs`).
        .codec_path("crate::codec::SizedCodec")
        .compile_fds(fds)?;

    // etcd's Watch service once more, answering with `WatchResponseEncoded` (wire-identical
    // to `WatchResponse`, events encoded once and shared): the server Engram registers. It
    // lands in `OUT_DIR/etcdserverpb.Watch.rs`, so its gRPC path is etcd's own.
    let watch = tonic_prost_build::manual::Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            tonic_prost_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::etcdserverpb::WatchRequest")
                .output_type("crate::etcdserverpb::WatchResponseEncoded")
                .codec_path("crate::codec::SizedCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_prost_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .compile(&[watch]);
    Ok(())
}

/// Writes `OUT_DIR/<package>.serde.rs`: serde's Serialize and Deserialize for the messages of
/// etcd's packages, in proto3's JSON mapping with the fields' proto names (etcd's gateway:
/// `OrigName`), as the gRPC-JSON gateway answers and reads them.
fn write_json(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message;
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .preserve_proto_field_names()
        // etcd's gateway ignores fields it does not know.
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}

/// Writes `OUT_DIR/methods.rs`: `METHODS`, every gRPC method of the protos with how it streams
/// (see `src/methods.rs`).
fn write_methods(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = String::from("pub const METHODS: &[GrpcMethod] = &[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                let kind = match (method.client_streaming(), method.server_streaming()) {
                    (false, false) => "Unary",
                    (true, false) => "ClientStream",
                    (false, true) => "ServerStream",
                    (true, true) => "BidiStream",
                };
                writeln!(
                    out,
                    "    GrpcMethod {{ service: \"{}.{}\", method: \"{}\", kind: MethodKind::{kind} }},",
                    file.package(),
                    service.name(),
                    method.name(),
                )?;
            }
        }
    }
    out.push_str("];\n");
    let dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(dir.join("methods.rs"), out)?;
    Ok(())
}

/// Writes `OUT_DIR/headers.rs`: [`WithHeader`] for every etcd response that carries a
/// `ResponseHeader` (see `src/header.rs`).
fn write_headers(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    use heck::ToUpperCamelCase;
    let mut out = String::new();
    // etcd's own services: its KV API, and the Lock and Election services beside it.
    let etcd_packages = ["etcdserverpb", "v3lockpb", "v3electionpb"];
    for file in fds
        .file
        .iter()
        .filter(|f| etcd_packages.contains(&f.package()))
    {
        let package = file.package();
        for message in &file.message_type {
            let has_header = message.field.iter().any(|field| {
                field.name() == "header" && field.type_name() == ".etcdserverpb.ResponseHeader"
            });
            if has_header {
                let name = message.name().to_upper_camel_case();
                writeln!(
                    out,
                    "impl WithHeader for crate::{package}::{name} {{\n    fn header_mut(&mut self) -> &mut Option<ResponseHeader> {{\n        &mut self.header\n    }}\n}}",
                )?;
            }
        }
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(dir.join("headers.rs"), out)?;
    Ok(())
}
