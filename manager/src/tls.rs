//! TLS material for the embedded store: a private CA and a server certificate it signs.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts of a CA and of a server certificate signed by it.
pub struct TlsMaterial {
    /// The CA certificate agents pin.
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

/// Makes a CA and a server certificate valid for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<TlsMaterial> {
    let ca_key = KeyPair::generate().context("generating CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Ferry store CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("signing CA certificate")?;
    let issuer = Issuer::new(ca, &ca_key);

    let key = KeyPair::generate().context("generating server key")?;
    let mut leaf = CertificateParams::new(names.to_vec())
        .with_context(|| format!("server certificate names {names:?}"))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "Ferry embedded store");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf
        .signed_by(&key, &issuer)
        .context("signing server certificate")?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
