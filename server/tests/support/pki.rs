//! Certificates for TLS tests, made with rcgen: a CA, a server certificate for 127.0.0.1, a
//! client certificate from the CA and one from another CA.

use super::write_file;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-sign CA").pem();
        Ca { params, key, pem }
    }

    /// A leaf certificate and its key, both PEM.
    pub fn sign(
        &self,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of one test: a CA, the server's certificate, a client certificate from the CA
/// and one from another CA.
pub struct Pki {
    _dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("engram-test-tls-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let ca = Ca::new("engram test CA");
        let (server_cert, server_key) = ca.sign(
            "engram",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = ca.sign("root", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let other = Ca::new("some other CA");
        let (other_cert, other_key) = other.sign("root", &[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write_file(d, "ca.pem", &ca.pem),
            server_cert: write_file(d, "server.pem", &server_cert),
            server_key: write_file(d, "server-key.pem", &server_key),
            client_cert: write_file(d, "client.pem", &client_cert),
            client_key: write_file(d, "client-key.pem", &client_key),
            other_ca: write_file(d, "other-ca.pem", &other.pem),
            other_cert: write_file(d, "other.pem", &other_cert),
            other_key: write_file(d, "other-key.pem", &other_key),
            _dir: dir,
        }
    }

    /// The server's flags, for an https listener on `port`.
    pub fn server_args(&self, port: u16, client_cert_auth: bool) -> Vec<String> {
        let mut args = vec![
            "--listen-client-urls".to_string(),
            format!("https://127.0.0.1:{port}"),
            "--cert-file".to_string(),
            path(&self.server_cert),
            "--key-file".to_string(),
            path(&self.server_key),
            "--trusted-ca-file".to_string(),
            path(&self.ca),
        ];
        if client_cert_auth {
            args.push("--client-cert-auth".to_string());
        }
        args
    }
}

pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
