//! `sipmba users`.

use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{CliError, Context, Ctx, Exit, Session, output, output::Rows};

use super::names::*;

/// `sipmba users`.
#[derive(Debug, clap::Subcommand)]
pub enum Users {
    /// Creates a user below you (or below `--parent`) and sets its first password.
    Create {
        /// The new user's login name: 3 to 64 characters of [A-Za-z0-9._@-].
        username: String,
        /// The parent (name or id; default: you).
        #[arg(long)]
        parent: Option<String>,
        /// Read the new user's password from standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Shows your subtree as a tree.
    Tree,
    /// Disables a user and everything below it: their tokens stop working within a second.
    Disable {
        /// Name or id.
        user: String,
    },
    /// Enables a user again.
    Enable {
        /// Name or id.
        user: String,
        /// Also enable every user below it.
        #[arg(long)]
        recursive: bool,
    },
    /// Sets (resets) the password of a user below you.
    SetPassword {
        /// Name or id.
        user: String,
        /// Read the password from standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
}

pub(super) fn read_new_password(from_stdin: bool, username: &str) -> Result<String, CliError> {
    use std::io::IsTerminal;
    if from_stdin {
        return super::read_line();
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "no terminal to ask for the password: pass --password-stdin and pipe it in",
        ));
    }
    let first = rpassword::prompt_password(format!("new password for {username}: "))
        .map_err(|e| CliError::new(Exit::Failure, format!("reading the password: {e}")))?;
    let again = rpassword::prompt_password("again: ")
        .map_err(|e| CliError::new(Exit::Failure, format!("reading the password: {e}")))?;
    if first != again {
        return Err(CliError::usage("the two passwords differ"));
    }
    Ok(first)
}

pub(super) async fn set_password(
    s: &Session,
    user: Uuid,
    password: String,
) -> Result<u32, CliError> {
    let answer = pb::account_service_client::AccountServiceClient::new(s.channel.clone())
        .set_user_password(s.req(pb::SetUserPasswordRequest {
            user: user_id(user),
            new_password: password,
        }))
        .await
        .doing("setting the password")?;
    Ok(answer.revoked_sessions)
}

/// Runs `sipmba users`.
pub async fn users(ctx: &Ctx, command: Users) -> Result<(), CliError> {
    let s = ctx.session().await?;
    let mut client = pb::user_service_client::UserServiceClient::new(s.channel.clone());
    match command {
        Users::Create {
            username,
            parent,
            password_stdin,
        } => {
            // Everything that can be refused is checked before the user exists.
            sipmba_objects::validate::username(&username)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let password = read_new_password(password_stdin, &username)?;
            sipmba_sso::secrets::check_password("password", &password)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let parent = match parent {
                Some(p) => resolve_user(&s, &p).await?,
                None => s.user,
            };
            let user = client
                .create_user(s.req(pb::CreateUserRequest {
                    username: username.clone(),
                    parent: user_id(parent),
                }))
                .await
                .doing("creating the user")?;
            let id = user
                .id
                .as_ref()
                .map(|i| i.value.clone())
                .unwrap_or_default();
            let id = Uuid::parse_str(&id)
                .map_err(|_| CliError::new(Exit::Failure, "the server returned no user id"))?;
            set_password(&s, id, password).await.map_err(|e| {
                e.hint(format!(
                    "the user exists without a password: `sipmba users set-password {username}`"
                ))
            })?;
            print_user(ctx, &user);
        }
        Users::Tree => {
            let users = all_users(&s).await?;
            tree(ctx, &s, &users);
        }
        Users::Disable { user } => {
            let id = resolve_user(&s, &user).await?;
            let answer = client
                .disable_user(s.req(pb::DisableUserRequest { id: user_id(id) }))
                .await
                .doing("disabling the user")?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("users_disabled", answer.users_disabled.into()),
                ],
            );
        }
        Users::Enable { user, recursive } => {
            let id = resolve_user(&s, &user).await?;
            let answer = client
                .enable_user(s.req(pb::EnableUserRequest {
                    id: user_id(id),
                    recursive,
                }))
                .await
                .doing("enabling the user")?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("users_enabled", answer.users_enabled.into()),
                ],
            );
        }
        Users::SetPassword {
            user,
            password_stdin,
        } => {
            let id = resolve_user(&s, &user).await?;
            let password = read_new_password(password_stdin, &user)?;
            let revoked = set_password(&s, id, password).await?;
            output::print_object(
                ctx.format,
                &[
                    ("id", id.to_string().into()),
                    ("revoked_sessions", revoked.into()),
                ],
            );
        }
    }
    Ok(())
}

pub(super) fn print_user(ctx: &Ctx, user: &pb::User) {
    output::print_object(
        ctx.format,
        &[
            ("id", id_of(user.id.as_ref().map(|i| i.value.as_str()))),
            ("username", user.username.clone().into()),
            (
                "parent",
                id_of(user.parent.as_ref().map(|i| i.value.as_str())),
            ),
            ("state", state(user.effective_state).into()),
            ("created", output::time(user.created.as_ref())),
        ],
    );
}

/// Prints the subtree under the caller, children in name order.
pub(super) fn tree(ctx: &Ctx, s: &Session, users: &[pb::User]) {
    let id = |u: &pb::User| u.id.as_ref().map(|i| i.value.clone()).unwrap_or_default();
    if ctx.format == output::Format::Json {
        let mut rows = Rows::new(&["id", "username", "parent", "depth", "state"]);
        for u in users {
            rows.push(vec![
                id(u).into(),
                u.username.clone().into(),
                id_of(u.parent.as_ref().map(|i| i.value.as_str())),
                u.depth.into(),
                state(u.effective_state).into(),
            ]);
        }
        rows.print(ctx.format, "");
        return;
    }
    let mut children: std::collections::HashMap<String, Vec<&pb::User>> = Default::default();
    for u in users {
        if let Some(parent) = &u.parent {
            children.entry(parent.value.clone()).or_default().push(u);
        }
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.username.cmp(&b.username));
    }
    let label = |u: &pb::User| {
        let mut text = format!("{}  {}", u.username, id(u));
        if u.effective_state != pb::ObjectState::Active as i32 {
            text.push_str("  (disabled)");
        }
        text
    };
    let Some(me) = users.iter().find(|u| id(u) == s.user.to_string()) else {
        return;
    };
    output::out(label(me));
    print_children(&children, &id(me), "", &label);
}

/// Prints the children of `of` below `prefix`, each followed by its own subtree.
pub(super) fn print_children(
    children: &std::collections::HashMap<String, Vec<&pb::User>>,
    of: &str,
    prefix: &str,
    label: &dyn Fn(&pb::User) -> String,
) {
    let Some(list) = children.get(of) else {
        return;
    };
    for (i, child) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        output::out(format_args!("{prefix}{branch}{}", label(child)));
        let id = child
            .id
            .as_ref()
            .map(|i| i.value.as_str())
            .unwrap_or_default();
        print_children(children, id, &format!("{prefix}{next}"), label);
    }
}
