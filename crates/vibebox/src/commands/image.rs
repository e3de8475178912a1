//! `vibebox image build|list|rm`.

use std::io::IsTerminal;
use std::time::Instant;

use vibebox_core::home::images_dir;
use vibebox_core::image::ImageName;
use vibebox_image::BuildOptions;

use crate::cli::ImageCommand;
use crate::context::Context;
use crate::error::hinted;

/// Builds image `name`, printing each phase with the time since the start.
pub fn build(ctx: &Context, name: &ImageName, mirror: Option<String>) -> anyhow::Result<()> {
    let opts = BuildOptions {
        name: name.clone(),
        images_dir: images_dir(&ctx.home),
        suite: "bookworm".to_string(),
        mirror,
    };
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = |phase: &str| {
        let t = start.elapsed().as_secs();
        if tty {
            eprintln!("\x1b[1m[{t:>3}s]\x1b[0m {phase}");
        } else {
            eprintln!("[{t:>3}s] {phase}");
        }
    };
    let m = vibebox_image::build(&opts, &mut progress).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "building image `{name}` failed; no image was installed"
        ))
    })?;
    // Templates of the old build can never be used again.
    let _ = std::fs::remove_dir_all(vibebox_vm::template::image_templates(
        &ctx.home,
        name.as_str(),
    ));
    println!(
        "built image `{}` (Debian {}, kernel {}, {} packages) in {} s",
        m.name,
        m.suite,
        m.kernel,
        m.packages.len(),
        m.build_seconds
    );
    Ok(())
}

/// Runs `vibebox image ...`.
pub fn run(ctx: &Context, command: ImageCommand) -> anyhow::Result<()> {
    let dir = images_dir(&ctx.home);
    match command {
        ImageCommand::Build { name, mirror } => build(ctx, &name, mirror),
        ImageCommand::List { json } => {
            let images = vibebox_image::list(&dir)?;
            let templates = vibebox_vm::template::list(&ctx.home);
            let templates_of = |image: &str| -> (usize, u64) {
                let of: Vec<_> = templates.iter().filter(|t| t.0 == image).collect();
                (of.len(), of.iter().map(|t| t.2).sum())
            };
            if json {
                let mut values = Vec::new();
                for i in &images {
                    let mut v = serde_json::to_value(i)?;
                    let (count, bytes) = templates_of(&i.name);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("templates".into(), count.into());
                        o.insert("templates_bytes".into(), bytes.into());
                    }
                    values.push(v);
                }
                println!("{}", serde_json::to_string_pretty(&values)?);
            } else if images.is_empty() {
                println!("no images yet: `vibebox image build` makes one (the first `vibebox` does it too)");
            } else {
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "SUITE".to_string(),
                    "KERNEL".to_string(),
                    "SIZE".to_string(),
                    "TEMPLATES".to_string(),
                    "BUILT".to_string(),
                ]];
                for i in images {
                    let (count, bytes) = templates_of(&i.name);
                    rows.push(vec![
                        i.name,
                        i.manifest.suite,
                        i.manifest.kernel,
                        format!("{} MiB", i.disk_usage / (1 << 20)),
                        if count == 0 {
                            "-".to_string()
                        } else {
                            format!("{count} ({} MiB)", bytes / (1 << 20))
                        },
                        i.manifest.built,
                    ]);
                }
                print!("{}", crate::terminal::table(&rows));
            }
            Ok(())
        }
        ImageCommand::Rm { name } => {
            vibebox_image::remove(&dir, &name)
                .map_err(|e| hinted(e.to_string(), "`vibebox image list` shows the images"))?;
            let _ = std::fs::remove_dir_all(vibebox_vm::template::image_templates(
                &ctx.home,
                name.as_str(),
            ));
            println!("removed image `{name}`");
            Ok(())
        }
    }
}
