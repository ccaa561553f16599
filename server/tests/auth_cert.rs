//! Under `--client-cert-auth`, a request without a token is made as the user its client
//! certificate's common name names (etcd's `AuthInfoFromTLS`): etcdctl with `--cert`/`--key`
//! and no `--user` against a real etcd 3.5 and Engram with the same certificates, answers
//! compared; the JSON gateway's refusal of named certificates; and a brain cluster whose
//! followers forward such requests to the leader.

mod support;

use etcdpb::etcdserverpb::{PutRequest, kv_client::KvClient};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::etcdctl::ROOT_AND_ALICE;
use support::pki::Ca;
use support::{Engram, etcd_bin, etcdctl_bin, write_file};
use tempfile::TempDir;
use testkit::ServerProcess;

/// A CA, a server certificate for 127.0.0.1 whose common name is `server_cn` (members also
/// present it to their leader), and client certificates: `alice`, `root`, `ghost` (no such
/// user) and `nocn` (no common name).
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new(server_cn: &str) -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("auth test CA");
        write_file(dir.path(), "ca.pem", &ca.pem);
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let sans = ["127.0.0.1", "localhost"];
        leaf(&ca, dir.path(), "server", Some(server_cn), &sans, &both);
        let client = [ExtendedKeyUsagePurpose::ClientAuth];
        for name in ["alice", "root", "ghost"] {
            leaf(&ca, dir.path(), name, Some(name), &[], &client);
        }
        leaf(&ca, dir.path(), "nocn", None, &[], &client);
        Certs { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A server's TLS flags for `url` (https), with --client-cert-auth.
    fn server_args(&self, url: &str) -> Vec<String> {
        [
            "--listen-client-urls",
            url,
            "--cert-file",
            &self.file("server.pem"),
            "--key-file",
            &self.file("server-key.pem"),
            "--trusted-ca-file",
            &self.file("ca.pem"),
            "--client-cert-auth",
        ]
        .map(String::from)
        .to_vec()
    }

    /// etcdctl's TLS flags as `who`.
    fn client(&self, who: &str) -> Vec<String> {
        vec![
            format!("--cacert={}", self.file("ca.pem")),
            format!("--cert={}", self.file(&format!("{who}.pem"))),
            format!("--key={}", self.file(&format!("{who}-key.pem"))),
        ]
    }
}

/// Writes `<name>.pem` and `<name>-key.pem`, signed by `ca`.
fn leaf(
    ca: &Ca,
    dir: &Path,
    name: &str,
    cn: Option<&str>,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> PathBuf {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    match cn {
        Some(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        None => params
            .distinguished_name
            .push(DnType::OrganizationName, "nobody"),
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
        .expect("sign leaf");
    write_file(dir, &format!("{name}-key.pem"), &key.serialize_pem());
    write_file(dir, &format!("{name}.pem"), &cert.pem())
}

/// A real etcd serving http on its harness port and https (with `tls`) on another.
async fn etcd(certs: &Certs, dir: &TempDir) -> (ServerProcess, String) {
    for _ in 0..5 {
        let ports = testkit::free_ports(3).expect("ports");
        let data = dir.path().join(format!("data-{}", ports[0]));
        let mut args = testkit::etcd_args("cert", &data, ports[0], ports[1]);
        let https = format!("https://127.0.0.1:{}", ports[2]);
        let mut tls = certs.server_args(&https);
        let at = args
            .iter()
            .position(|a| a == "--listen-client-urls")
            .unwrap();
        args[at + 1] = format!("{},{https}", args[at + 1]);
        tls.drain(..2);
        args.extend(tls);
        args.push("--unsafe-no-fsync".into());
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        let log = dir.path().join("etcd.log");
        let mut server = ServerProcess::spawn("etcd", &etcd_bin(), &args, endpoint, &log)
            .unwrap_or_else(|e| panic!("{e}"));
        match server.wait_ready(Duration::from_secs(30)).await {
            Ok(_) => return (server, https),
            Err(testkit::Error::PortTaken { .. }) => continue,
            Err(err) => panic!("{err}"),
        }
    }
    panic!("etcd: no free ports")
}

/// etcdctl's answer with `flags`, as `who` says it: stdout, or its last error line, with
/// what differs between two servers anyway (addresses, lease ids, hashes) blanked.
fn etcdctl(endpoint: &str, flags: &[String], args: &[&str]) -> String {
    // `timeout`: a watch the server does not cancel would never end.
    let out = Command::new("timeout")
        .arg("20")
        .arg(etcdctl_bin())
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=5s",
            "--command-timeout=5s",
        ])
        .args(flags)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    let text = support::etcdctl::answer(&out)
        .trim()
        .replace(endpoint, "<endpoint>");
    let mut words: Vec<String> = text.split(' ').map(String::from).collect();
    for word in &mut words {
        if word.len() >= 8
            && word
                .trim_end_matches(',')
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        {
            *word = "<id>".into();
        }
    }
    words.join(" ")
}

fn setup(endpoint: &str) {
    let enable: [&[&str]; 1] = [&["auth", "enable"]];
    for args in ROOT_AND_ALICE.into_iter().chain(enable) {
        let out = etcdctl(endpoint, &[], args);
        assert!(!out.starts_with("Error"), "{args:?}: {out}");
    }
}

/// What each certificate may do, through etcdctl without `--user`.
fn transcript(https: &str, certs: &Certs) -> Vec<String> {
    let mut lines = Vec::new();
    for who in ["alice", "root", "ghost", "nocn"] {
        let flags = certs.client(who);
        let mut commands: Vec<Vec<&str>> = [
            "put /k v",
            "get /k",
            "put /x v",
            "get /x",
            "user list",
            "user get alice",
            "role get r",
            "auth status",
            "endpoint hashkv",
            "lease grant 10",
            "lease revoke 1234",
        ]
        .iter()
        .map(|c| c.split(' ').collect())
        .collect();
        if who != "root" {
            // Root may change members on etcd (Engram's members join through the engine).
            commands.push(vec!["member", "remove", "1234"]);
            commands.push(vec!["lock", "/x"]);
            commands.push(vec!["elect", "e", "v"]);
            commands.push(vec!["watch", "/x"]);
        }
        for args in commands {
            let out = etcdctl(https, &flags, &args);
            lines.push(format!("{who}: {} -> {out}", args.join(" ")));
        }
    }
    lines
}

#[tokio::test]
async fn a_certificates_common_name_is_its_user_as_on_etcd() {
    let certs = Certs::new("server");
    let dir = tempfile::tempdir().expect("temp dir");
    let (etcd, etcd_https) = etcd(&certs, &dir).await;
    let port = support::free_port();
    let engram_https = format!("https://127.0.0.1:{port}");
    let engram = Engram::start_with_args(&certs.server_args(&engram_https)).await;
    setup(etcd.endpoint());
    setup(&engram.endpoint());

    let expected = transcript(&etcd_https, &certs);
    let got = transcript(&engram_https, &certs);
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e);
    }
    assert!(expected.contains(&"alice: get /x -> Error: etcdserver: permission denied".into()));
    assert!(
        expected.contains(&"ghost: user list -> Error: etcdserver: user name not found".into())
    );
    assert!(expected.contains(&"nocn: user list -> Error: etcdserver: user name is empty".into()));
    // MemberList needs no permission.
    for https in [&etcd_https, &engram_https] {
        let out = etcdctl(https, &certs.client("nocn"), &["member", "list"]);
        assert!(!out.starts_with("Error"), "{out}");
    }
    // A token still wins over the certificate.
    let flags = [certs.client("root"), vec!["--user=alice:apw".into()]].concat();
    for https in [&etcd_https, &engram_https] {
        let out = etcdctl(https, &flags, &["get", "/x"]);
        assert_eq!(out, "Error: etcdserver: permission denied");
    }

    // The gateway refuses a named certificate, and checks one without a name by its token.
    for (https, what) in [(&etcd_https, "etcd"), (&engram_https, "engram")] {
        let port: u16 = https.rsplit(':').next().unwrap().parse().unwrap();
        let named = support_https::post(port, &certs, "alice", "/v3/kv/range").await;
        assert_eq!(
            named,
            (
                400,
                "text/plain; charset=utf-8".into(),
                "CommonName of client sending a request against gateway will be ignored and not \
                 used as expected\n"
                    .into()
            ),
            "{what}"
        );
        let (status, _, body) = support_https::post(port, &certs, "nocn", "/v3/kv/range").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body.contains("etcdserver: user name is empty"),
            "{what}: {body}"
        );
    }
}

/// In a brain cluster a follower forwards writes and auth calls to the leader over its own
/// connection, presenting its own certificate (here named `root`): the leader must act as the
/// client's certificate names, never as the follower's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_the_certificates_user_not_their_own() {
    use backend::engine::{AnyEngine, MemoryEngine};
    use server::local_cluster::{LocalCluster, LocalMember};
    let certs = Certs::new("root");
    let engine = AnyEngine::Memory(MemoryEngine::new());
    let mut members = Vec::new();
    for i in 0..3 {
        // Started off the test's runtime, with another port if the one chosen was taken
        // meanwhile (a member that fails to start drops its runtime).
        let mut attempts = 0;
        let member = loop {
            let https = format!("https://127.0.0.1:{}", support::free_port());
            let mut args = certs.server_args(&https);
            args.extend(["--advertise-client-urls".into(), https]);
            args.extend(["--election-lease".into(), "60s".into()]);
            let engine = engine.clone();
            let started = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                LocalMember::start(&format!("cert-{i}"), &engine, &args).map_err(|e| e.to_string())
            });
            match started.await.unwrap() {
                Ok(member) => break member,
                Err(_) if attempts < 5 => attempts += 1,
                Err(err) => panic!("member {i}: {err}"),
            }
        };
        members.push(member);
    }
    let cluster = LocalCluster { members };
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let follower = &cluster.members[cluster.followers(leader)[0]];
    let (plain, https) = (&follower.url, &follower.member().client_urls[1]);
    setup(plain);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while etcdctl(plain, &[], &["get", "/k"]) != "Error: etcdserver: user name is empty" {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never enforced auth"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = certs.client("alice");
    assert_eq!(etcdctl(https, &alice, &["put", "/k", "v"]), "OK");
    assert_eq!(etcdctl(https, &alice, &["get", "/k"]), "/k\nv");
    let denied = "Error: etcdserver: permission denied";
    assert_eq!(etcdctl(https, &alice, &["put", "/x", "v"]), denied);
    assert_eq!(etcdctl(https, &alice, &["user", "list"]), denied);
    let ghost = certs.client("ghost");
    assert_eq!(etcdctl(https, &ghost, &["put", "/k", "v"]), denied);
    let not_found = "Error: etcdserver: user name not found";
    assert_eq!(etcdctl(https, &ghost, &["role", "add", "r2"]), not_found);
    // No token and no certificate: nobody, though the follower's own certificate says root.
    let empty = "Error: etcdserver: user name is empty";
    assert_eq!(etcdctl(plain, &[], &["put", "/k", "v"]), empty);
    assert_eq!(etcdctl(plain, &[], &["role", "add", "r2"]), empty);
    assert_eq!(
        etcdctl(https, &certs.client("root"), &["role", "add", "r2"]),
        "Role r2 created"
    );

    // A vouch only members can make: a client cannot claim a user by sending one.
    let leader_url = cluster.members[leader].url.clone();
    let mut kv = KvClient::connect(leader_url).await.unwrap();
    let mut request = tonic::Request::new(PutRequest {
        key: "/k".into(),
        value: "v".into(),
        ..Default::default()
    });
    let forged = "726f6f74.1.00".parse().unwrap();
    request.metadata_mut().insert("engram-cert-user", forged);
    let refused = kv.put(request).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
}

/// POST over HTTPS/1.1 with a client certificate.
mod support_https {
    use super::Certs;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    /// Status, content type and body of `POST path` with a request for key `/k`, as `who`.
    pub async fn post(port: u16, certs: &Certs, who: &str, path: &str) -> (u16, String, String) {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(certs.file("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_file_iter(certs.file(&format!("{who}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(certs.file(&format!("{who}-key.pem"))).unwrap();
        let provider = Arc::new(crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        // etcd's gateway tells its own calls apart by the Accept header it forwards: without
        // one, etcd takes its server certificate's name for the caller's. Clients send one.
        let req = hyper::Request::post(path)
            .header("host", format!("127.0.0.1:{port}"))
            .header("accept", "*/*")
            .body(Full::new(Bytes::from_static(br#"{"key":"L2s="}"#)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp.headers().get("content-type").cloned();
        let content_type = content_type.map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        (status, content_type.unwrap_or_default(), body)
    }
}
