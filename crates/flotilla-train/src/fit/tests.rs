use super::*;

/// One blob per class in 2-D, as CSV with string labels; centres are 4 apart and points
/// up to `spread` from them, so a small spread separates the classes and a large one not.
fn blobs(classes: &[&str], spread: f64) -> Dataset {
    let mut rng = Rng::new(11);
    let mut text = String::from("a,b,label\n");
    for i in 0..240 {
        let c = i % classes.len();
        let (cx, cy) = ((c as f64 * 2.1).cos() * 4.0, (c as f64 * 2.1).sin() * 4.0);
        text += &format!(
            "{},{},{}\n",
            cx + rng.uniform(-spread, spread),
            cy + rng.uniform(-spread, spread),
            classes[c]
        );
    }
    Dataset::from_reader(text.as_bytes(), "blobs.csv", "label").unwrap()
}

#[test]
fn runs_are_reproducible_and_learn_separable_classes() {
    let data = blobs(&["x", "y", "z"], 1.0);
    let config = TrainConfig {
        epochs: 30,
        dropout: 0.2,
        hidden: vec![8],
        ..TrainConfig::default()
    };
    let a = fit(&data, ModelKind::Mlp, &config, &mut |_| {}).unwrap();
    let b = fit(&data, ModelKind::Mlp, &config, &mut |_| {}).unwrap();
    assert_eq!(a.artifact, b.artifact);
    assert_eq!(a.metrics["accuracy"], 1.0, "{:?}", a.metrics);
    assert_eq!(a.artifact.layers.len(), 2);
    assert_eq!(a.artifact.layers[1].activation, "softmax");
    let other_seed = TrainConfig { seed: 7, ..config };
    let c = fit(&data, ModelKind::Mlp, &other_seed, &mut |_| {}).unwrap();
    assert_ne!(a.artifact.layers, c.artifact.layers);
}

#[test]
fn the_chunked_gradient_is_the_whole_batch_gradient() {
    let data = blobs(&["x", "y"], 1.0);
    let x = data.x.slice(s![..100, ..]);
    let y = Array2::from_shape_fn((100, 1), |(r, _)| (r % 2) as f64);
    let mut rng = Rng::new(2);
    let net = Network::new(
        2,
        &[5],
        super::super::models::HiddenActivation::Tanh,
        1,
        Head::Sigmoid,
        &mut rng,
    );
    let chunked = mean_gradient(&net, x, y.view(), 0.0, &mut rng);
    let mut whole = net.gradient(x, y.view(), 0.0, &mut rng);
    whole.scale(0.01);
    for (a, b) in chunked.weights.iter().zip(&whole.weights) {
        assert!((a - b).iter().all(|d| d.abs() < 1e-12));
    }
}

#[test]
fn progress_sees_every_epoch_and_early_stopping_keeps_the_best() {
    let data = blobs(&["x", "y"], 6.0);
    let config = TrainConfig {
        epochs: 500,
        patience: 3,
        learning_rate: 0.3,
        ..TrainConfig::default()
    };
    let mut seen = Vec::new();
    let t = fit(&data, ModelKind::Logistic, &config, &mut |e| {
        seen.push(e.epoch)
    })
    .unwrap();
    assert_eq!(seen, (1..=t.history.len()).collect::<Vec<_>>());
    assert!(t.history.len() < 500, "patience 3 never stopped the run");
    let best = t
        .history
        .iter()
        .map(|e| e.val_loss)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(t.history[t.best_epoch - 1].val_loss, best);
    assert_eq!(t.history.len(), t.best_epoch + 3);
    assert_eq!(t.artifact.labels.as_ref().unwrap().len(), 2);
    assert_eq!(t.artifact.outputs, 1);
}

#[test]
fn an_mlp_regresses_numbers_unless_told_they_are_classes() {
    let text = blobs(&["x", "y"], 1.0);
    let codes: Vec<String> = text
        .y
        .iter()
        .map(|l| (if l == "x" { "1" } else { "2.0" }).to_owned())
        .collect();
    let data = Dataset { y: codes, ..text };
    let config = TrainConfig {
        epochs: 5,
        hidden: vec![4],
        ..TrainConfig::default()
    };
    let t = fit(&data, ModelKind::Mlp, &config, &mut |_| {}).unwrap();
    assert_eq!(t.primary_metric.name, "r2");
    assert_eq!(t.artifact.layers[1].activation, "identity");
    let classify = TrainConfig {
        task: Task::Classification,
        ..config
    };
    let t = fit(&data, ModelKind::Mlp, &classify, &mut |_| {}).unwrap();
    assert_eq!(t.primary_metric.name, "accuracy");
    assert_eq!(t.artifact.layers[1].activation, "sigmoid");
    let labels: Vec<String> = t
        .artifact
        .labels
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(labels, ["1", "2.0"]);
}
