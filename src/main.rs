use std::process::ExitCode;

fn main() -> ExitCode {
    if synapse_backup::juju::is_dispatch() {
        synapse_backup::charm::main()
    } else {
        synapse_backup::cli::main()
    }
}
