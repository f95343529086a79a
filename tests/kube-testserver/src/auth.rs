//! Transport security and authentication, as a real API server has them: HTTPS with a CA
//! and a serving certificate made fresh for each server (rcgen), and bearer tokens. The
//! server issues one token for its admin kubeconfig and one per ServiceAccount a test asks
//! for; a request without a live token gets the apiserver's 401. Plain HTTP without
//! authentication is an explicit option for the scale benchmark only.
//!
//! Not here: authorization (which identity may do what: `rbac`) and client certificates.

use anyhow::Context as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CA and the serving configuration of one server.
pub struct Pki {
    /// The CA certificate, PEM: what a kubeconfig's `certificate-authority-data` holds.
    pub ca_pem: String,
    /// The same certificate, DER.
    pub ca_der: Vec<u8>,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Names the serving certificate is valid for, besides the ones the caller adds: loopback
/// and the in-cluster service name.
pub const DEFAULT_SANS: [&str; 6] = [
    "127.0.0.1",
    "::1",
    "localhost",
    "kubernetes",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Makes a CA and a serving certificate for `sans` (IP addresses or DNS names).
pub fn generate(extra_sans: &[String]) -> anyhow::Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own per server, as separate clusters' CAs have: a client that trusts
    // another server's CA then finds no issuer at all (not a bad signature by a namesake).
    let mut id = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("kube-testserver CA {id} (test infrastructure)"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    sans.extend(extra_sans.iter().cloned());
    let key = KeyPair::generate().context("generating the serving key")?;
    let mut srv = CertificateParams::new(sans).context("the serving certificate's names")?;
    srv.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let srv_cert = srv
        .signed_by(&key, &ca_cert, &ca_key)
        .context("signing the serving certificate")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![srv_cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .context("the serving certificate")?;
    // hyper serves HTTP/1.1 here; kubectl and kube-rs fall back to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        server_config: Arc::new(config),
    })
}

/// Who a request comes from, as the apiserver's authenticators name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn service_account(namespace: &str, name: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    pub fn admin() -> Identity {
        Identity {
            user: "kube-testserver:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

#[derive(Debug)]
struct Issued {
    who: Identity,
    expires: Option<Instant>,
}

/// The bearer tokens the server accepts.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
}

/// Why a request was not authenticated (each answers 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    NoCredentials,
    UnknownToken,
    Expired,
}

impl Tokens {
    /// A new random token for `who`, valid for `ttl` (None: for the server's life).
    pub fn issue(&self, who: Identity, ttl: Option<Duration>) -> String {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's random source");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expires = ttl.map(|t| Instant::now() + t);
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), Issued { who, expires });
        token
    }

    /// Withdraws a token (a deleted ServiceAccount, a rotated secret).
    pub fn revoke(&self, token: &str) {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The identity behind an `Authorization` header value.
    pub fn authenticate(&self, authorization: &str) -> Result<Identity, Rejected> {
        let Some(token) = authorization
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err(Rejected::NoCredentials);
        };
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        match issued.get(token) {
            None => Err(Rejected::UnknownToken),
            Some(i) if i.expires.is_some_and(|e| Instant::now() >= e) => Err(Rejected::Expired),
            Some(i) => Ok(i.who.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_expire_and_revoke() {
        let t = Tokens::default();
        let sa = Identity::service_account("ns", "agent");
        let good = t.issue(sa.clone(), None);
        let short = t.issue(sa.clone(), Some(Duration::from_millis(1)));
        assert_eq!(t.authenticate(&format!("Bearer {good}")), Ok(sa.clone()));
        assert_eq!(t.authenticate(""), Err(Rejected::NoCredentials));
        assert_eq!(t.authenticate("Basic abc"), Err(Rejected::NoCredentials));
        assert_eq!(t.authenticate("Bearer nope"), Err(Rejected::UnknownToken));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            t.authenticate(&format!("Bearer {short}")),
            Err(Rejected::Expired)
        );
        t.revoke(&good);
        assert_eq!(
            t.authenticate(&format!("Bearer {good}")),
            Err(Rejected::UnknownToken)
        );
        assert_eq!(sa.user, "system:serviceaccount:ns:agent");
    }

    #[test]
    fn pki_makes_a_serving_config() {
        let p = generate(&["10.0.2.100".into()]).unwrap();
        assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(p.server_config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
