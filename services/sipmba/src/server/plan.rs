//! The validate step: a configuration checked for the services one process runs.

use sipmba_runtime::{Config, Defaults, ServiceIdentity};

use super::{Failure, Target};
use crate::config::{self, Services};

/// A configuration checked for the services one process runs: every setting valid, and every
/// service able to reach the others it needs.
#[derive(Debug)]
pub struct Plan {
    pub(super) target: Target,
    pub(super) config: Config,
    pub(super) services: Services,
}

impl Plan {
    /// Loads the configuration of `args` over `defaults` and checks it for `target`; the error
    /// names the setting, its flag and its variable.
    pub fn validate(
        target: Target,
        args: &config::Args,
        defaults: &Defaults,
    ) -> Result<Self, Failure> {
        let loaded = config::load(args, defaults).map_err(|e| Failure::Usage(e.to_string()))?;
        let plan = Plan {
            target,
            config: loaded.config,
            services: loaded.services,
        };
        let runs = |t| plan.runs(t);
        let config = &plan.config;
        let services = &plan.services;
        if matches!(
            target,
            Target::Collect | Target::Control | Target::Processing
        ) && config.queue.brokers.is_empty()
        {
            return Err(Failure::Usage(format!(
                "invalid setting `queue.brokers` (flag --brokers, environment SIPMBA_BROKERS): \
                 is not set: {} works on the Kafka-protocol log",
                target.name()
            )));
        }
        for (service, identity) in [
            (Target::Control, services.control.identity()),
            (Target::Processing, services.processing.identity()),
        ] {
            if runs(service) {
                check_identity(
                    &identity,
                    runs(Target::Sso),
                    runs(Target::Objects),
                    config.tls.is_some(),
                )?;
            }
        }
        if runs(Target::Processing)
            && services.processing.control_url.is_none()
            && (!runs(Target::Control) || config.tls.is_some())
        {
            return Err(Failure::Usage(
                "invalid setting `processing.control_url`: is not set: processing's rules send \
                 their commands through Control; give its http:// address unless it runs in this \
                 process without TLS"
                    .into(),
            ));
        }
        if runs(Target::Sso) && !runs(Target::Objects) && services.sso.objects_url.is_none() {
            return Err(Failure::Usage(
                "invalid setting `sso.objects_url` (flag --objects-url, environment SIPMBA_OBJECTS_URL): \
                 is not set: sso needs Objects; give its http:// address"
                    .into(),
            ));
        }
        if runs(Target::Sso)
            && runs(Target::Objects)
            && config.tls.is_some()
            && services.sso.objects_url.is_none()
        {
            return Err(Failure::Usage(
                "invalid setting `sso.objects_url` (flag --objects-url, environment SIPMBA_OBJECTS_URL): \
                 with TLS on, sso reaches Objects over a separate plaintext address only; run them as separate targets"
                    .into(),
            ));
        }
        Ok(plan)
    }

    /// Whether this process runs `service`.
    pub fn runs(&self, service: Target) -> bool {
        self.target == service || self.target == Target::All
    }

    /// The validated shared configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Each service's validated settings.
    pub fn services(&self) -> &Services {
        &self.services
    }
}

/// Refuses a configuration in which a service could not reach Objects and sso.
fn check_identity(
    identity: &ServiceIdentity,
    with_sso: bool,
    with_objects: bool,
    tls: bool,
) -> Result<(), Failure> {
    let section = identity.section;
    if !with_sso && identity.client_secret_file.is_none() {
        return Err(Failure::Usage(format!(
            "invalid setting `{section}.client_secret_file`: is not set: {section} authenticates to \
             sso with client_credentials (client `{section}.client_id`) to ask Objects for access decisions"
        )));
    }
    if (!with_objects || tls) && identity.objects_url.is_none()
        || (!with_sso || tls) && identity.token_url.is_none()
    {
        return Err(Failure::Usage(format!(
            "invalid setting `{section}.objects_url` / `{section}.token_url`: {section} needs the \
             http:// addresses of Objects and of sso's /oauth2/token unless they run in this \
             process without TLS"
        )));
    }
    Ok(())
}
