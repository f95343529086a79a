//! Support for the end-to-end tests: cached Debian roots, fixture packages and signed repositories.
