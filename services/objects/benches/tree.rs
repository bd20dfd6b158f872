//! Cost of the tree rules on a 10,000-user tree, on PostgreSQL and SQLite: an effective-state
//! check (every ancestor ACTIVE), a subtree check (is X below Y), and a cascade disable of the
//! whole tree.
//!
//! Side by side with the alternatives: for the effective-state check, an `IN` list built from the
//! materialized path; for the subtree check and the cascade, the recursive CTE over `parent_id`
//! that a tree without materialized paths would need.
//!
//! Run: `cargo bench -p sipmba-objects --bench tree` (PostgreSQL at 127.0.0.1:5432, or
//! `SIPMBA_TEST_POSTGRES_URL`). Set `SIPMBA_BENCH_USERS` to change the tree size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::{Duration, Instant};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, PaginatorTrait, QueryFilter,
    Statement,
};
use sipmba_objects::{Caller, Store, entity::users};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

const CHECKS: usize = 2000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("SIPMBA_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("tree: {total} users, fan-out 10 (depth 4), plus a chain of 100 levels");
    for backend in [Backend::Postgres, Backend::Sqlite] {
        run(backend, total).await?;
    }
    Ok(())
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Stats {
        mean,
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run(backend: Backend, total: usize) -> anyhow::Result<()> {
    let db = TestDb::new(backend).await?;
    let conn = sipmba_runtime::db::connect(&db.url, 4).await?;
    sipmba_objects::migrate(&conn).await?;
    let store = Store::new(conn.clone());
    let admin = Caller::Admin {
        actor: "service:bench".into(),
    };
    println!("\n== {backend:?}");

    // Build the tree breadth-first through the store (the real insert path).
    let started = Instant::now();
    let root = id(&store.create_user(&admin, "bench-root", None).await?);
    let mut level = vec![root];
    let mut created = 1;
    let mut leaves = Vec::new();
    'build: while created < total {
        let mut next = Vec::new();
        for parent in &level {
            for _ in 0..10 {
                if created >= total {
                    leaves = next.clone();
                    break 'build;
                }
                let u = store
                    .create_user(&admin, &format!("user-{created}"), Some(*parent))
                    .await?;
                next.push(id(&u));
                created += 1;
            }
        }
        leaves = next.clone();
        level = next;
    }
    let build = started.elapsed();
    println!(
        "create user (via the store, one transaction each): {total} in {:.2} s = {:.0} users/s",
        build.as_secs_f64(),
        total as f64 / build.as_secs_f64()
    );
    let mut chain = root;
    for i in 0..sipmba_objects::MAX_DEPTH {
        chain = id(&store
            .create_user(&admin, &format!("chain-{i}"), Some(chain))
            .await?);
    }
    let leaf = *leaves.last().unwrap_or(&root);

    let root_path = path_of(&conn, root).await?;
    for (label, target) in [("leaf at depth 4", leaf), ("leaf at depth 100", chain)] {
        let ours = time_checks(|| async {
            store
                .user_effective_state(target)
                .await
                .map(|s| s == sipmba_proto::v1::ObjectState::Active)
        })
        .await?;
        let alt = time_checks(|| in_list_active(&conn, target)).await?;
        println!(
            "effective-state check, {label} ({CHECKS} checks): ours (recursive walk up parent_id, one round trip) mean {} p50 {} p99 {} | alternative (read the path, then an IN list of its ancestors) mean {} p50 {} p99 {}",
            us(ours.mean),
            us(ours.p50),
            us(ours.p99),
            us(alt.mean),
            us(alt.p50),
            us(alt.p99)
        );
        let ours = time_checks(|| async {
            Ok::<_, sea_orm::DbErr>(path_of(&conn, target).await?.starts_with(&root_path))
        })
        .await?;
        let base = time_checks(|| cte_below(&conn, target, root)).await?;
        println!(
            "subtree check (is the {label} below the root?): ours (materialized path prefix) mean {} p50 {} p99 {} | recursive-CTE baseline mean {} p50 {} p99 {}",
            us(ours.mean),
            us(ours.p50),
            us(ours.p99),
            us(base.mean),
            us(base.p50),
            us(base.p99)
        );
    }

    // Cascade disable of the whole tree, three rounds (re-enabled in between).
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut disabled = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (n, _) = store.disable_user(&admin, root).await?;
        ours.push(t.elapsed());
        disabled = n;
        store.enable_user(&admin, root, true).await?;
        let t = Instant::now();
        let m = cte_disable(&conn, root).await?;
        base.push(t.elapsed());
        assert_eq!(m, n, "both disable the same users");
        store.enable_user(&admin, root, true).await?;
    }
    let ms = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "cascade disable of {disabled} users (one transaction, with the event naming them and their things): materialized path {} | recursive-CTE baseline (update only, no event) {}",
        ms(&ours),
        ms(&base)
    );
    Ok(())
}

fn id(user: &sipmba_proto::v1::User) -> Uuid {
    Uuid::parse_str(
        &user
            .id
            .as_ref()
            .map(|i| i.value.clone())
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

async fn time_checks<F, Fut, E>(mut f: F) -> anyhow::Result<Stats>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    for _ in 0..50 {
        anyhow::ensure!(f().await?, "the user must be effectively active");
    }
    let mut samples = Vec::with_capacity(CHECKS);
    for _ in 0..CHECKS {
        let t = Instant::now();
        let active = f().await?;
        samples.push(t.elapsed());
        anyhow::ensure!(active, "the user must be effectively active");
    }
    Ok(stats(samples))
}

fn sql(conn: &sea_orm::DatabaseConnection, postgres: &str) -> (DatabaseBackend, String) {
    let backend = conn.get_database_backend();
    let text = match backend {
        DatabaseBackend::Postgres => postgres.to_owned(),
        _ => postgres.replace("$1", "?1").replace("$2", "?2"),
    };
    (backend, text)
}

async fn path_of(conn: &sea_orm::DatabaseConnection, user: Uuid) -> Result<String, sea_orm::DbErr> {
    users::Entity::find_by_id(user)
        .one(conn)
        .await?
        .map(|u| u.path)
        .ok_or_else(|| sea_orm::DbErr::Custom("no such user".into()))
}

/// Alternative effective-state check: read the path, then count non-ACTIVE users among the ids
/// it names.
async fn in_list_active(
    conn: &sea_orm::DatabaseConnection,
    user: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let path = path_of(conn, user).await?;
    let ids: Vec<Uuid> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .filter_map(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .filter_map(|b| Uuid::from_slice(&b).ok())
        .collect();
    let disabled = users::Entity::find()
        .filter(users::Column::Id.is_in(ids))
        .filter(users::Column::State.ne(1))
        .count(conn)
        .await?;
    Ok(disabled == 0)
}

/// Baseline subtree check: walk up from `user` through `parent_id` looking for `root`.
async fn cte_below(
    conn: &sea_orm::DatabaseConnection,
    user: Uuid,
    root: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    let (backend, text) = sql(
        conn,
        "WITH RECURSIVE anc(id, parent_id) AS ( \
           SELECT id, parent_id FROM users WHERE id = $1 \
           UNION ALL SELECT u.id, u.parent_id FROM users u JOIN anc ON u.id = anc.parent_id) \
         SELECT COUNT(*) AS n FROM anc WHERE id = $2",
    );
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            text,
            [user.into(), root.into()],
        ))
        .await?
        .ok_or_else(|| sea_orm::DbErr::Custom("no row".into()))?;
    let n: i64 = row.try_get("", "n")?;
    Ok(n == 1)
}

/// Baseline: disable the subtree found by walking `parent_id` downwards.
async fn cte_disable(
    conn: &sea_orm::DatabaseConnection,
    root: Uuid,
) -> Result<u64, sea_orm::DbErr> {
    let (backend, text) = sql(
        conn,
        "WITH RECURSIVE sub(id) AS ( \
           SELECT id FROM users WHERE id = $1 \
           UNION ALL SELECT u.id FROM users u JOIN sub ON u.parent_id = sub.id) \
         UPDATE users SET state = 2 WHERE state = 1 AND id IN (SELECT id FROM sub)",
    );
    Ok(conn
        .execute_raw(Statement::from_sql_and_values(backend, text, [root.into()]))
        .await?
        .rows_affected())
}
