//! What the operator may do: `kubectl auth can-i --list` for its ServiceAccount holds exactly the
//! chart's rules and what every authenticated client may do.

use super::*;

impl Suite {
    pub(super) async fn rbac(&self) -> anyhow::Result<()> {
        let who = format!("--as=system:serviceaccount:{}:{OPERATOR}", self.operator_ns);
        let allowed = [
            ("patch", "sipmbas.sipmba.io"),
            ("patch", "things.sipmba.io/status"),
            ("update", "things.sipmba.io/finalizers"),
            ("create", "deployments.apps"),
            ("create", "statefulsets.apps"),
            ("patch", "secrets"),
            ("create", "poddisruptionbudgets.policy"),
            // The exposure a SipMba no longer asks for is deleted.
            ("delete", "services"),
            ("create", "ingresses.networking.k8s.io"),
            ("create", "events.events.k8s.io"),
            // The owner references of children block their owner's deletion: allowed where
            // OwnerReferencesPermissionEnforcement is on only with this.
            ("update", "sipmbas.sipmba.io/finalizers"),
        ];
        let refused = [
            ("create", "pods"),
            ("delete", "secrets"),
            ("delete", "deployments.apps"),
            ("create", "pods/exec"),
            ("list", "nodes"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("update", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "sipmbas.sipmba.io"),
        ];
        for (verb, resource) in allowed.iter().chain(&refused) {
            let expected = allowed.contains(&(verb, resource));
            // `kubectl auth can-i` answers yes (exit 0) or no (exit 1).
            let (kind, subresource) = resource.split_once('/').unwrap_or((resource, ""));
            let subresource = format!("--subresource={subresource}");
            let mut args = vec!["auth", "can-i", verb, kind, "-n", NS, &who];
            if kind != *resource {
                args.push(&subresource);
            }
            let answer = run("kubectl", &args, None).await.is_ok();
            if answer != expected {
                bail!(
                    "the operator {} {verb} {resource}",
                    if answer { "may" } else { "may not" }
                );
            }
            println!("  {verb} {resource}: {}", if answer { "yes" } else { "no" });
        }
        // Everything it may do, as `kubectl auth can-i --list` says: the chart's rules and the
        // few every authenticated client has, nothing more. In its own namespace, the Lease too.
        let mut namespaces = vec![(self.operator_ns.as_str(), &OPERATOR_NS_RULES[..])];
        if self.operator_ns != NS {
            namespaces.push((NS, &[][..]));
        }
        for (ns, extra) in namespaces {
            let listed = run(
                "kubectl",
                &["auth", "can-i", "--list", "-n", ns, &who],
                None,
            )
            .await?;
            let mut rules: Vec<String> = listed
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect();
            rules.sort();
            let mut expected: Vec<String> = OPERATOR_RULES
                .iter()
                .chain(&EVERYONE_RULES)
                .chain(extra)
                .map(|r| (*r).to_owned())
                .collect();
            expected.sort();
            if rules != expected {
                let more: Vec<_> = rules.iter().filter(|r| !expected.contains(r)).collect();
                let less: Vec<_> = expected.iter().filter(|r| !rules.contains(r)).collect();
                bail!(
                    "kubectl auth can-i --list -n {ns}: beyond what it uses {more:?}; missing \
                     {less:?}\n{listed}"
                );
            }
            println!("  kubectl auth can-i --list -n {ns} {who}: exactly what it uses");
            for line in listed.lines() {
                println!("    {line}");
            }
        }
        Ok(())
    }
}

/// `kubectl auth can-i --list` for the operator in a platform's namespace, each line with its
/// spaces collapsed: the chart's ClusterRole ...
const OPERATOR_RULES: [&str; 14] = [
    "configmaps [] [] [get list watch create patch]",
    "deployments.apps [] [] [get list watch create patch]",
    "events.events.k8s.io [] [] [create patch]",
    "ingresses.networking.k8s.io [] [] [get list watch create patch delete]",
    "poddisruptionbudgets.policy [] [] [get list watch create patch]",
    "secrets [] [] [get list watch create patch]",
    "services [] [] [get list watch create patch delete]",
    "sipmbas.sipmba.io [] [] [get list watch patch]",
    "sipmbas.sipmba.io/finalizers [] [] [update]",
    "sipmbas.sipmba.io/status [] [] [get patch]",
    "statefulsets.apps [] [] [get list watch create patch]",
    "things.sipmba.io [] [] [get list watch patch]",
    "things.sipmba.io/finalizers [] [] [update]",
    "things.sipmba.io/status [] [] [get patch]",
];

/// ... and what every authenticated client may do (discovery, health, the issuer's keys, asking
/// what it may do itself): Kubernetes' default ClusterRoles.
const EVERYONE_RULES: [&str; 23] = [
    "[/.well-known/openid-configuration/] [] [get]",
    "[/.well-known/openid-configuration] [] [get]",
    "[/api/*] [] [get]",
    "[/api] [] [get]",
    "[/apis/*] [] [get]",
    "[/apis] [] [get]",
    "[/healthz] [] [get]",
    "[/healthz] [] [get]",
    "[/livez] [] [get]",
    "[/livez] [] [get]",
    "[/openapi/*] [] [get]",
    "[/openapi] [] [get]",
    "[/openid/v1/jwks/] [] [get]",
    "[/openid/v1/jwks] [] [get]",
    "[/readyz] [] [get]",
    "[/readyz] [] [get]",
    "[/version/] [] [get]",
    "[/version/] [] [get]",
    "[/version] [] [get]",
    "[/version] [] [get]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
    "selfsubjectreviews.authentication.k8s.io [] [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
];

/// What it may do in its own namespace beyond these: the Lease, created and then only its own.
const OPERATOR_NS_RULES: [&str; 2] = [
    "leases.coordination.k8s.io [] [] [create]",
    "leases.coordination.k8s.io [] [sipmba-operator] [get patch]",
];
