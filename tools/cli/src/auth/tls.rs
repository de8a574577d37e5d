//! `choreo auth tls`: a CA of its own and the certificates it signs, for a test or local
//! deployment (a production site uses its own PKI). Files written:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA: clients trust `ca.pem` (`NATS_TLS_CA`) |
//! | `server.pem`, `server-key.pem` | nats-server's certificate: localhost, 127.0.0.1, `nats` and `--host`s |
//! | `client.pem`, `client-key.pem` | a client certificate, for mutual TLS (`NATS_TLS_CERT`, `NATS_TLS_KEY`) |
//! | `tls.conf` | nats-server's `tls` block using them; with `--verify`, clients must show a certificate |
//!
//! Keys are readable by their owner only; certificates and tls.conf by all.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::{create_private_dir, write_private, write_public};
use crate::Failure;

/// Names the server certificate always holds: a local server, and the compose service.
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "nats"];

#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// The folder to write the CA, the certificates and tls.conf into (created, 0700).
    #[arg(long, short, value_name = "DIR", default_value = "choreo-tls")]
    out: PathBuf,
    /// Another name (DNS name or IP address) the server is reached by; repeat for several.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Where nats-server will find these files, for the paths in tls.conf [default: DIR as an
    /// absolute path]. In compose, the folder the files are mounted at.
    #[arg(long, value_name = "PATH")]
    conf_dir: Option<PathBuf>,
    /// Require a client certificate signed by the CA (mutual TLS).
    #[arg(long)]
    verify: bool,
}

pub fn run(args: TlsArgs) -> Result<(), Failure> {
    create_private_dir(&args.out)?;
    let failed = |what: &str| {
        let what = what.to_string();
        move |err: rcgen::Error| Failure::failed(format!("cannot make the {what}: {err}"))
    };

    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "choreo local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(failed("CA's key"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(failed("CA"))?;

    let mut names: Vec<String> = SERVER_NAMES.iter().map(ToString::to_string).collect();
    names.extend(args.hosts.iter().cloned());
    let mut server = CertificateParams::new(names.clone()).map_err(failed("server certificate"))?;
    server
        .distinguished_name
        .push(DnType::CommonName, "choreo nats-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(failed("server's key"))?;
    let server_cert = server
        .signed_by(&server_key, &ca)
        .map_err(failed("server certificate"))?;

    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::CommonName, "choreo client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(failed("client's key"))?;
    let client_cert = client
        .signed_by(&client_key, &ca)
        .map_err(failed("client certificate"))?;

    let out = &args.out;
    write_public(&out.join("ca.pem"), &ca.pem())?;
    write_private(&out.join("ca-key.pem"), &ca_key_pem)?;
    write_public(&out.join("server.pem"), &server_cert.pem())?;
    write_private(&out.join("server-key.pem"), &server_key.serialize_pem())?;
    write_public(&out.join("client.pem"), &client_cert.pem())?;
    write_private(&out.join("client-key.pem"), &client_key.serialize_pem())?;

    let conf_dir = match args.conf_dir {
        Some(dir) => dir,
        None => std::path::absolute(out).map_err(|err| {
            Failure::failed(format!("cannot tell where {} is: {err}", out.display()))
        })?,
    };
    let path = |file: &str| serde_json::Value::from(conf_dir.join(file).display().to_string());
    let conf = format!(
        "# Written by `choreo auth tls`: TLS for every client connection.\n\
         # Include it in nats-server's configuration: include \"tls.conf\"\n\
         tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  timeout: 2\n}}\n",
        path("server.pem"),
        path("server-key.pem"),
        path("ca.pem"),
        args.verify,
    );
    write_public(&out.join("tls.conf"), &conf)?;
    println!(
        "wrote a CA, a server certificate for {} and a client certificate in {}, and tls.conf{}",
        names.join(", "),
        out.display(),
        if args.verify {
            " (clients must show a certificate)"
        } else {
            ""
        }
    );
    println!(
        "clients: NATS_URL=tls://localhost:4222 NATS_TLS_CA={}/ca.pem NATS_REQUIRE_TLS=true",
        out.display()
    );
    Ok(())
}
