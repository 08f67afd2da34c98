//! The `tollgate` binary: command line and wiring.
//!
//! - `serve` loads [`config`], opens and migrates the store, bootstraps the
//!   root admin token, compiles the first snapshot, and runs the gateway and
//!   admin listeners plus the background tasks ([`serve`]), among them the
//!   webhook deliverer ([`webhooks`]), the JWKS fetcher ([`jwks`]) and,
//!   with Redis, the shared rate-limit counters ([`counters`]).
//! - `migrate` applies migrations; `apply`, `export` and `keys` talk to a
//!   running admin API ([`cli`]); `version` prints the version.

mod alerts;
mod autotopup;
mod billing;
mod calls;
mod cli;
mod config;
mod counters;
mod export;
mod jwks;
mod leases;
mod ledger;
mod metrics;
mod otel;
mod serve;
mod stripe;
mod warnings;
mod webhooks;
mod x402;
mod yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An AI and API gateway that gets you paid"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ConfigArgs {
    /// The configuration file (YAML). Every key can also be set by
    /// TOLLGATE_<SECTION>__<KEY>.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides storage.database_url (sqlite://PATH or postgres://…).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Overrides storage.redis_url.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// The admin API's base URL (default: from admin.listen in the configuration).
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// The admin token (default: TOLLGATE_ADMIN_TOKEN, else <data_dir>/admin-token).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and admin listeners.
    Serve(ConfigArgs),
    /// Apply the database migrations and exit.
    Migrate(ConfigArgs),
    /// Make the configuration match a declarative file (idempotent).
    Apply {
        /// The file to apply (YAML or JSON); '-' reads standard input.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Delete upstreams and services the file does not name.
        #[arg(long)]
        prune: bool,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the configuration as a declarative file.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// yaml or json.
        #[arg(long, default_value = "yaml")]
        format: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create, list and revoke an app's API keys (through the admin API).
    Keys {
        #[command(subcommand)]
        command: KeysArgs,
    },
    /// A team's wallet: balance, ledger, grants and adjustments (through the admin API).
    Wallet {
        #[command(subcommand)]
        command: WalletArgs,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum WalletArgs {
    /// Print the team's balance.
    Show {
        #[arg(long)]
        team: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the team's ledger (tab-separated, or CSV with --csv).
    Ledger {
        #[arg(long)]
        team: String,
        /// top_up, grant, charge, refund or adjustment.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give a team money (platform operators only).
    Grant(EntryArgs),
    /// Correct a team's balance either way (platform operators only).
    Adjust(EntryArgs),
}

/// One ledger entry made from the command line.
#[derive(clap::Args)]
struct EntryArgs {
    #[arg(long)]
    team: String,
    /// Decimal amount, like 25 or 12.50 (an adjustment may be negative: -2.50).
    #[arg(long, allow_hyphen_values = true)]
    amount: String,
    #[arg(long)]
    reason: String,
    /// Repeating a command with the same key records its entry once.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

impl EntryArgs {
    /// The command for `kind` ("grants" or "adjustments") and the admin API to use.
    fn into_command(self, kind: &'static str) -> (cli::WalletCommand, AdminArgs) {
        (
            cli::WalletCommand::Record {
                team: self.team,
                kind,
                amount: self.amount,
                reason: self.reason,
                idempotency_key: self.idempotency_key,
            },
            self.admin,
        )
    }
}

#[derive(Subcommand)]
enum KeysArgs {
    /// Create a key; prints the key (shown once) on standard output.
    Create {
        /// The app (slug or id).
        #[arg(long)]
        app: String,
        #[arg(long)]
        name: Option<String>,
        /// live (default) or test.
        #[arg(long)]
        env: Option<String>,
        /// A service the key may call ('weather', or 'weather:read'); repeat for more.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// RFC 3339 expiry, like 2027-01-31T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List an app's keys: id, prefix, state, name.
    List {
        #[arg(long)]
        app: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a key: the gateway refuses it within a second.
    Revoke {
        #[arg(long)]
        app: String,
        /// The key's id.
        key_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("TOLLGATE_"))
        .collect()
}

pub fn load_config(args: &ConfigArgs) -> anyhow::Result<config::Config> {
    let overrides = config::Overrides {
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
    };
    Ok(config::load(
        args.config.as_deref(),
        &environment(),
        &overrides,
    )?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(&args).await,
            Command::Migrate(args) => serve::migrate_only(&args).await,
            Command::Apply {
                file,
                prune,
                dry_run,
                admin,
            } => cli::apply(&file, prune, dry_run, &admin).await,
            Command::Export {
                output,
                format,
                admin,
            } => cli::export(output.as_deref(), &format, &admin).await,
            Command::Keys { command } => {
                let (command, admin) = match command {
                    KeysArgs::Create {
                        app,
                        name,
                        env,
                        scopes,
                        expires_at,
                        admin,
                    } => (
                        cli::KeysCommand::Create {
                            app,
                            name,
                            env,
                            scopes,
                            expires_at,
                        },
                        admin,
                    ),
                    KeysArgs::List { app, admin } => (cli::KeysCommand::List { app }, admin),
                    KeysArgs::Revoke { app, key_id, admin } => {
                        (cli::KeysCommand::Revoke { app, key_id }, admin)
                    }
                };
                cli::keys(command, &admin).await
            }
            Command::Wallet { command } => {
                let (command, admin) = match command {
                    WalletArgs::Show { team, admin } => (cli::WalletCommand::Show { team }, admin),
                    WalletArgs::Ledger {
                        team,
                        kind,
                        csv,
                        admin,
                    } => (cli::WalletCommand::Ledger { team, kind, csv }, admin),
                    WalletArgs::Grant(entry) => entry.into_command("grants"),
                    WalletArgs::Adjust(entry) => entry.into_command("adjustments"),
                };
                cli::wallet(command, &admin).await
            }
            Command::Version => {
                cli::print(&format!("tollgate {}", env!("CARGO_PKG_VERSION")));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
