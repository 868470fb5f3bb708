//! Throw-away certificates and keys for one test control plane: a CA, the API server's serving
//! certificate (valid for 127.0.0.1, localhost and the `kubernetes` Service), the service-account
//! signing key, and client certificates (kubelets authenticate as `system:node:<name>`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Paths of the files written by [`write`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): clients trust it.
    pub ca_cert: PathBuf,
    /// The CA key (PEM).
    pub ca_key: PathBuf,
    /// The API server's serving certificate (PEM).
    pub serving_cert: PathBuf,
    /// The API server's serving key (PEM).
    pub serving_key: PathBuf,
    /// The service-account signing key (PKCS#8 PEM).
    pub sa_key: PathBuf,
    /// The service-account verification key (SPKI PEM).
    pub sa_pub: PathBuf,
}

/// The first address of the cluster's Service range: the `kubernetes` Service, which pods on
/// real nodes dial (the API server's certificate must name it, as on any cluster).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// The CA's certificate parameters (the same each time, so a reloaded key signs as the CA).
fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "baton-test-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

impl Pki {
    /// A client certificate and key (PEM) for user `name` in `groups`, signed by the CA.
    pub fn client_cert(&self, name: &str, groups: &[&str]) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&self.ca_key)?)?;
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Generates the PKI into `dir`.
pub fn write(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, &ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(
        [
            "127.0.0.1",
            "localhost",
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(str::to_owned)
        .to_vec(),
    )?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let sa = KeyPair::generate()?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    std::fs::write(&pki.ca_cert, ca_pem)?;
    std::fs::write(&pki.ca_key, ca_key.serialize_pem())?;
    std::fs::write(&pki.serving_cert, serving_cert.pem())?;
    std::fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    std::fs::write(&pki.sa_key, sa.serialize_pem())?;
    std::fs::write(&pki.sa_pub, sa.public_key_pem())?;
    Ok(pki)
}
