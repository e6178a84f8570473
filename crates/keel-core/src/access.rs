//! Who may do what: the roles admin tokens carry and the permissions routes require.
//!
//! The matrix lives here, next to the names, so the gateway, the CLI and the store agree on
//! it. Client keys of an app (`[[keys]]` in keel.toml) are not roles: they hold the
//! app-scoped permissions only (see [`Permission::client_key_may`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The role of an admin token; `admin = true` client keys count as [`Role::Admin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads interactions, KPIs, alerts, policies and metrics.
    Viewer,
    /// A viewer who also reads the audit log and evaluation runs.
    Auditor,
    /// A viewer who also works the review queue and acknowledges alerts.
    Reviewer,
    /// A viewer who also writes drafts, runs gates, approves others' versions, promotes and rolls back.
    PolicyAuthor,
    /// Everything, including tokens, ingest for any app, alert resolution and gate overrides.
    Admin,
}

impl Role {
    /// Every role, from least to most powerful.
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Auditor, Role::Reviewer, Role::PolicyAuthor, Role::Admin];

    /// The name used on the command line, in the API, the store and audit payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Reviewer => "reviewer",
            Role::PolicyAuthor => "policy_author",
            Role::Admin => "admin",
        }
    }

    /// True when this role holds `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Viewer => permission.is_read(),
            Role::Auditor => permission.is_read() || matches!(permission, P::ReadAudit | P::ReadEvalRuns),
            Role::Reviewer => permission.is_read() || matches!(permission, P::ReviewCases | P::AcknowledgeAlerts),
            Role::PolicyAuthor => {
                permission.is_read()
                    || matches!(permission, P::WritePolicies | P::RunGates | P::ApprovePolicies | P::PromotePolicies)
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!("unknown role `{s}` (expected one of: admin, policy_author, reviewer, auditor, viewer)")
        })
    }
}

/// What a route or command needs. Routes name exactly one permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read stored interactions and their explanations.
    ReadInteractions,
    /// Read KPIs.
    ReadKpi,
    /// Read drift alerts.
    ReadAlerts,
    /// Read policy versions, their status, diffs, gate runs and shadow reports.
    ReadPolicies,
    /// Read metrics.
    ReadMetrics,
    /// Read the audit log.
    ReadAudit,
    /// Read evaluation runs.
    ReadEvalRuns,
    /// Take and label cases in the review queue.
    ReviewCases,
    /// Acknowledge drift alerts.
    AcknowledgeAlerts,
    /// Create drafts and candidate policy versions.
    WritePolicies,
    /// Run replay and evaluation gates.
    RunGates,
    /// Approve a policy version someone else wrote.
    ApprovePolicies,
    /// Promote, withdraw and roll back policy versions.
    PromotePolicies,
    /// Promote without a passing gate run (loudly audited).
    OverrideGate,
    /// Create, list and revoke admin tokens.
    ManageTokens,
    /// Resolve drift alerts.
    ResolveAlerts,
    /// Change configuration at run time.
    ManageConfig,
    /// Send feedback and handoff events for interactions (client keys: of their own app).
    SendFeedback,
    /// Ingest external interactions (client keys: into their own app).
    Ingest,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 19] = [
        Permission::ReadInteractions,
        Permission::ReadKpi,
        Permission::ReadAlerts,
        Permission::ReadPolicies,
        Permission::ReadMetrics,
        Permission::ReadAudit,
        Permission::ReadEvalRuns,
        Permission::ReviewCases,
        Permission::AcknowledgeAlerts,
        Permission::WritePolicies,
        Permission::RunGates,
        Permission::ApprovePolicies,
        Permission::PromotePolicies,
        Permission::OverrideGate,
        Permission::ManageTokens,
        Permission::ResolveAlerts,
        Permission::ManageConfig,
        Permission::SendFeedback,
        Permission::Ingest,
    ];

    /// The snake_case name used in error messages and audit payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ReadInteractions => "read_interactions",
            Permission::ReadKpi => "read_kpi",
            Permission::ReadAlerts => "read_alerts",
            Permission::ReadPolicies => "read_policies",
            Permission::ReadMetrics => "read_metrics",
            Permission::ReadAudit => "read_audit",
            Permission::ReadEvalRuns => "read_eval_runs",
            Permission::ReviewCases => "review_cases",
            Permission::AcknowledgeAlerts => "acknowledge_alerts",
            Permission::WritePolicies => "write_policies",
            Permission::RunGates => "run_gates",
            Permission::ApprovePolicies => "approve_policies",
            Permission::PromotePolicies => "promote_policies",
            Permission::OverrideGate => "override_gate",
            Permission::ManageTokens => "manage_tokens",
            Permission::ResolveAlerts => "resolve_alerts",
            Permission::ManageConfig => "manage_config",
            Permission::SendFeedback => "send_feedback",
            Permission::Ingest => "ingest",
        }
    }

    /// True for the reads every role (viewer and up) holds.
    fn is_read(self) -> bool {
        matches!(
            self,
            Permission::ReadInteractions
                | Permission::ReadKpi
                | Permission::ReadAlerts
                | Permission::ReadPolicies
                | Permission::ReadMetrics
        )
    }

    /// The roles that hold this permission, least powerful first.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.allows(self)).collect()
    }

    /// True when an app's client key (not `admin = true`) holds this permission, for its own
    /// app only.
    pub fn client_key_may(self) -> bool {
        matches!(self, Permission::SendFeedback | Permission::Ingest)
    }

    /// Who holds this permission, in words: `role policy_author or admin`.
    pub fn holders(self) -> String {
        let names: Vec<&str> = self.roles().into_iter().map(Role::as_str).collect();
        let roles = match names.split_last() {
            Some((last, [])) => format!("role {last}"),
            Some((last, rest)) => format!("role {} or {last}", rest.join(", ")),
            None => "no role".to_owned(),
        };
        if self.client_key_may() {
            format!("{roles}, or a client key of the app")
        } else {
            roles
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).ok(), Some(serde_json::json!(role.as_str())));
        }
        let err = "superuser".parse::<Role>().err().unwrap_or_default();
        assert!(err.contains("policy_author"), "{err}");
    }

    #[test]
    fn the_matrix_is_the_documented_one() {
        use Permission as P;
        let reads = [P::ReadInteractions, P::ReadKpi, P::ReadAlerts, P::ReadPolicies, P::ReadMetrics];
        for role in Role::ALL {
            for p in reads {
                assert!(role.allows(p), "{role} must read {p}");
            }
        }
        let expect = |p: Permission, roles: &[Role]| assert_eq!(p.roles(), roles, "{p}");
        expect(P::ReadAudit, &[Role::Auditor, Role::Admin]);
        expect(P::ReadEvalRuns, &[Role::Auditor, Role::Admin]);
        expect(P::ReviewCases, &[Role::Reviewer, Role::Admin]);
        expect(P::AcknowledgeAlerts, &[Role::Reviewer, Role::Admin]);
        for p in [P::WritePolicies, P::RunGates, P::ApprovePolicies, P::PromotePolicies] {
            expect(p, &[Role::PolicyAuthor, Role::Admin]);
        }
        for p in [P::OverrideGate, P::ManageTokens, P::ResolveAlerts, P::ManageConfig, P::SendFeedback, P::Ingest] {
            expect(p, &[Role::Admin]);
        }
        let client: Vec<Permission> = Permission::ALL.into_iter().filter(|p| p.client_key_may()).collect();
        assert_eq!(client, vec![P::SendFeedback, P::Ingest]);
    }

    #[test]
    fn holders_name_the_roles_needed() {
        assert_eq!(Permission::ApprovePolicies.holders(), "role policy_author or admin");
        assert_eq!(Permission::ManageTokens.holders(), "role admin");
        assert_eq!(Permission::ReadAudit.holders(), "role auditor or admin");
        assert_eq!(Permission::Ingest.holders(), "role admin, or a client key of the app");
        assert_eq!(Permission::ReadKpi.holders(), "role viewer, auditor, reviewer, policy_author or admin");
    }
}
