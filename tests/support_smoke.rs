mod support;

#[test]
fn support_compiles() {}
