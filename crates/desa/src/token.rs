//! `desa token new NAME --scopes ...`: a fresh bearer token and the line
//! of an auth file (`--auth-file`) that lets it in with those scopes. The
//! token is printed once and kept nowhere; the file holds its SHA-256.

use anyhow::Result;
use clap::{Args, Subcommand};
use desa_server::auth::{token_hash_hex, Scope};
use rand::RngCore;

#[derive(Args, Clone, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum TokenCommand {
    /// Print a new random token (256 bits, hex) and its auth-file line.
    New {
        /// The credential's name (in logs; unique within the file).
        name: String,
        /// Comma list of `ingest`, `query` and `metrics`.
        #[arg(long)]
        scopes: String,
    },
}

pub fn run(args: TokenArgs) -> Result<()> {
    let TokenCommand::New { name, scopes } = args.command;
    Scope::parse_list(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('#') {
        anyhow::bail!("the name must be one word without `#`, got {name:?}");
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("{token}");
    println!("{name} {scopes} {}", token_hash_hex(&token));
    eprintln!(
        "the first line is the token (shown once: give it to the client, as `Authorization: Bearer TOKEN` or --token);\n\
         append the second line to the node's --auth-file, then send it SIGHUP"
    );
    Ok(())
}
