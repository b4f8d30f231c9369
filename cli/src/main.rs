//! `backupctl`: the operator CLI. The full command set arrives with issue #4;
//! today it offers `keys generate` only and refuses everything else.

use std::process::ExitCode;

use backup_core::{KeyId, MasterKey};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["keys", "generate"] => {
            let id = KeyId::new("generated").expect("static id is valid");
            match MasterKey::generate(id) {
                Ok(key) => {
                    println!("{}", key.to_hex().as_str());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("backupctl: could not generate a key: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("backupctl: only `keys generate` is available in this build (see issue #4)");
            ExitCode::from(2)
        }
    }
}
