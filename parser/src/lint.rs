//! BuildKit's build checks (placeholder replaced below).
