//! A lazily initialized value. Patched: threads that find another one
//! initializing the value block on a `OnceLock` instead of spinning (the
//! threadpool's first initialization spawns its threads from inside the
//! initializer, and each of them spun until the last was spawned).

/// A lazily initialized value
pub struct Lazy<T, F> {
    value: std::sync::OnceLock<T>,
    init: F,
}

impl<T, F> Lazy<T, F> {
    /// Create a new Lazy
    pub const fn new(init: F) -> Self
    where
        F: Sized,
    {
        Self { value: std::sync::OnceLock::new(), init }
    }
}

impl<T, F> std::ops::Deref for Lazy<T, F>
where
    F: Fn() -> T,
{
    type Target = T;

    fn deref(&self) -> &T {
        self.value.get_or_init(|| (self.init)())
    }
}
