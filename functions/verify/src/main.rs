//! AWS Lambda function `verify`. The handler arrives with issue #6 (Lambda
//! functions); until then this binary refuses to run rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("the verify Lambda handler is not built yet (see issue #6); nothing was done");
    std::process::ExitCode::FAILURE
}
