//! Asking before a command deletes or overwrites rows (teardown, repair, setup
//! `--replace-existing-from`): on a terminal the operator types `yes`; without one the
//! command refuses unless `--yes` was given (a script must say so).

use std::io::{BufRead, IsTerminal, Write};

/// True when the operator confirmed `question`. Without a terminal, says that `command`
/// needs `--yes` (and `alternative`, if any) and returns false.
pub fn ask(command: &str, question: &str, alternative: &str) -> std::io::Result<bool> {
    if !std::io::stdin().is_terminal() {
        eprintln!("error: {command} needs --yes when stdin is not a terminal{alternative}");
        return Ok(false);
    }
    print!("{question}\nType 'yes' to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        eprintln!("{command} cancelled");
        return Ok(false);
    }
    Ok(true)
}
