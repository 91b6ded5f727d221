//! A worker role that also imports an interface no rolehost host provides
//! (`test:stray/thing`): the host must refuse it before anything starts, naming the import.

use rolehost_sdk::WorkerRole;

wit_bindgen::generate!({
    inline: "
        package test:stray;
        interface thing {
            poke: func();
        }
        world stray {
            import thing;
        }
    ",
});

struct Stray;

impl WorkerRole for Stray {
    fn on_start() -> Result<Self, String> {
        // Used, so the import stays in the component.
        test::stray::thing::poke();
        Ok(Stray)
    }

    fn run(&mut self) -> Result<(), String> {
        Ok(())
    }
}

rolehost_sdk::worker!(Stray);
