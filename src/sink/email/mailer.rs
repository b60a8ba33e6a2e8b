//! The SMTP side: a lettre transport built from `[email]`, and the MIME message around a
//! rendered group.
//!
//! No connection pool: alert mail is a few messages an hour, and a fresh connection per
//! message means a server restart never leaves a stale one to fail on first.

use std::future::Future;
use std::net::IpAddr;

use anyhow::Context;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::alert::Alert;
use crate::config::{parse_mailbox, EmailSettings, EmailTls};

use super::render::render;

pub type SmtpError = lettre::transport::smtp::Error;

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The dashboard's base URL, linked in every message's footer.
    overview: Option<String>,
}

impl Mailer {
    pub fn new(settings: &EmailSettings, overview: Option<&str>) -> anyhow::Result<Mailer> {
        let host = settings.smtp_host.as_str();
        let tls = |what| {
            TlsParameters::new(host.to_string())
                .with_context(|| format!("TLS for email.tls = {what} to {host}"))
        };
        let tls = match settings.tls {
            EmailTls::None => Tls::None,
            // Required, not opportunistic: a man in the middle could strip the offer and
            // read the password and the alerts.
            EmailTls::Starttls => Tls::Required(tls("starttls")?),
            EmailTls::Tls => Tls::Wrapper(tls("tls")?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(settings.smtp_port)
            .tls(tls)
            .timeout(Some(settings.timeout));
        if !settings.username.is_empty() {
            if settings.tls == EmailTls::None && !is_loopback(host) {
                tracing::warn!(
                    smtp_host = host,
                    "email.username is set with email.tls = none: the SMTP password crosses \
                     the network unencrypted"
                );
            }
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.clone(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: parse_mailbox("email.from", &settings.from)?,
            overview: overview.map(str::to_string),
        })
    }

    /// One multipart/alternative message (plain text, then HTML) to `to` about `alerts`.
    /// Only `from`, `to` and the cleaned Subject become headers: nothing from an event is
    /// placed in a header any other way.
    pub fn message(&self, to: &[Mailbox], alerts: &[Alert]) -> anyhow::Result<Message> {
        let rendered = render(alerts, self.overview.as_deref());
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(rendered.subject)
            .message_id(None)
            .user_agent(concat!("pipewatch/", env!("CARGO_PKG_VERSION")).to_string());
        for mailbox in to {
            builder = builder.to(mailbox.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .context("building the alert email")
    }

    /// Delivers `message`; the future owns what it needs, so the sender task can keep
    /// taking alerts in while it runs.
    pub fn send(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), SmtpError>> + Send + 'static {
        let transport = self.transport.clone();
        async move { transport.send(message).await.map(|_| ()) }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
