"""Writes the four notebooks of this folder from the cells below (unexecuted).

    python notebooks/build_notebooks.py

Edit a notebook here (plain Python, easy to review) and rebuild; ``tests/test_notebooks.py``
runs every ``*.ipynb`` of this folder with nbclient on tiny data.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SIMULATE = """\
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import cryotorch as ct
from cryotorch.physics.fourier import cropped_box_for_resolution
from cryotorch.simulate.atomic import (
    atomic_model_to_map, builtin_structures, read_model_coordinates, write_interpolated_model,
)
from cryotorch.simulate.particles import SimulationSettings, simulate_particles

torch.set_num_threads(2)
torch.manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="cryotorch-notebook-"))
box, pixel_size = 32, 3.0  # Å per pixel: a small box keeps the notebook fast
open_model, closed_model = builtin_structures()  # adenylate kinase, open and closed
centre = read_model_coordinates(open_model).mean(0)
maps = np.stack([
    atomic_model_to_map(model, box, pixel_size, 50.0, centre=centre)
    for model in (open_model, write_interpolated_model(open_model, closed_model, CLOSED, work / "b.pdb"))
])
star = simulate_particles(maps, pixel_size, work / "data",
                          SimulationSettings(n_particles=N_PARTICLES, snr=SNR, seed=0))
truth = np.loadtxt(star.parent / "true_classes.txt", dtype=np.int64) - 1
print(star, len(truth), "particles")
"""

CLASSIFY_HELPER = '''\
d_work, _ = cropped_box_for_resolution(box, pixel_size, 8.0)  # images Fourier-cropped to 8 Å
images = ct.ParticleImages(ct.read_particles(star))
batcher = ct.BatchMaker(images, d_work, torch.device("cpu"))

def run(posterior=None, max_iterations=8):
    """Classify with these posterior settings (class similarity, force hard); the result."""
    settings = ct.ClassificationSettings(
        model=ct.ModelSettings(target_resolution=8.0, initial_resolution=20.0, resolution_reach_at=4),
        optim=ct.OptimSettings(online_epochs=1.0, batch_per_class=250, max_iterations=max_iterations),
        posterior=posterior or ct.PosteriorSettings(),
        progress=False,
    )
    return ct.classify(batcher, settings)
'''


def quickstart() -> list:
    return [
        new_markdown_cell(
            "# Quickstart: two conformations, classified\n\n"
            "Simulate particles of adenylate kinase in two conformations (open and closed), "
            "classify them into two classes with the default EM, and look at the class maps, "
            "the effective sample size (ESS) of the posteriors and the class sizes per "
            "iteration. The same run from the command line is `cryotorch-classify` (with no "
            "arguments it simulates a larger version of this data set)."
        ),
        new_code_cell("N_PARTICLES, SNR, CLOSED = 1000, 0.1, 1.0\n" + SIMULATE),
        new_code_cell(
            CLASSIFY_HELPER
            + "\nresult = run()\n"
            + "accuracy = ct.classification_accuracy(result.posteriors.argmax(1), truth, 2)\n"
            + 'print(f"accuracy against the true classes: {100 * accuracy:.1f} %")\n'
            + "assert accuracy > 0.9"
        ),
        new_markdown_cell(
            "Central sections of the two class maps (at the working box and pixel size), next "
            "to the true maps low-passed the same way:"
        ),
        new_code_cell(
            "true = ct.fourier_crop_3d(torch.from_numpy(maps), d_work)\n"
            "fig, axes = plt.subplots(2, 2, figsize=(6, 6))\n"
            "for k in range(2):\n"
            "    axes[0, k].imshow(result.maps[k].sum(0), cmap='gray')\n"
            "    axes[0, k].set_title(f'class {k + 1} (projection)')\n"
            "    axes[1, k].imshow(true[k].sum(0), cmap='gray')\n"
            "    axes[1, k].set_title(f'true map {k + 1}')\n"
            "for ax in axes.flat:\n"
            "    ax.axis('off')\n"
            "plt.show()"
        ),
        new_markdown_cell(
            "The ESS of a particle, 1 / Σ_k γ_ik², is 1 when it sits in one class and K when "
            "it is spread evenly. Class sizes per iteration come from the run's table (also "
            "`iterations.csv` and TensorBoard in a command-line run)."
        ),
        new_code_cell(
            "ess = ct.effective_sample_size(torch.from_numpy(result.posteriors).double())\n"
            "sizes = np.array([[h['class_001_fraction'], h['class_002_fraction']] "
            "for h in result.history])\n"
            "fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))\n"
            "axes[0].hist(ess.numpy(), bins=40)\n"
            "axes[0].set_xlabel('ESS'); axes[0].set_ylabel('particles')\n"
            "axes[1].plot(sizes, marker='o'); axes[1].set_xlabel('iteration')\n"
            "axes[1].set_ylabel('class size (fraction)'); axes[1].legend(['class 1', 'class 2'])\n"
            "plt.show()\n"
            "print('mean ESS', float(ess.mean()))"
        ),
    ]


def similarity_and_hard() -> list:
    return [
        new_markdown_cell(
            "# Class similarity and force-hard, explained\n\n"
            "The posterior γ_ik = softmax_k(log π_k + ℓ_ik) of the E-step goes through two "
            "layers. **Class similarity** β: at β = 1 every particle is in every class "
            "equally, at β = 0 the posterior is left as computed; it is annealed from a start "
            "value to 0. **Force hard**: a straight-through argmax, one-hot forward and the "
            "soft gradient backward, which makes β irrelevant. β = 0 is *not* hard "
            "classification: the E-step's own posterior is soft wherever the data cannot "
            "tell the classes apart, which is what users see as a spread of ESS."
        ),
        new_code_cell(
            "import torch\nimport cryotorch as ct\n\n"
            "scores = torch.tensor([[2.0, 0.0, -1.0], [0.3, 0.1, 0.0]])  # log π + ℓ, 2 particles, K = 3\n"
            "layer = ct.ClassSimilarity('temperature')\n"
            "for beta in (0.0, 0.25, 0.5, 0.75, 1.0):\n"
            "    gamma = layer(scores, beta)\n"
            "    print(f'β = {beta:.2f}  γ = {gamma.double().numpy().round(3).tolist()}  "
            "ESS = {ct.effective_sample_size(gamma).double().numpy().round(2).tolist()}')\n"
            "hard = ct.StraightThroughHard()(layer(scores.requires_grad_(), 0.0))\n"
            "print('force hard:', hard.detach().numpy().tolist())"
        ),
        new_markdown_cell(
            "Now the same data (two conformations that differ less, at lower SNR, so that "
            "posteriors stay soft) under β schedules and the four force-hard modes: `never`, "
            "`always`, `after_anneal` (hard once β has reached 0: a schedule no other tool "
            "offers) and `first_n` (hard for the first N iterations, then soft)."
        ),
        new_code_cell("N_PARTICLES, SNR, CLOSED = 1000, 0.05, 0.7\n" + SIMULATE),
        new_code_cell(
            CLASSIFY_HELPER + "\nfrom cryotorch import PosteriorSettings, SimilaritySettings\n"
            "flat, anneal = SimilaritySettings(start=0.0, anneal_end=0), SimilaritySettings(start=0.5, anneal_end=6)\n"
            "runs = {\n"
            "    'β = 0 throughout, soft': PosteriorSettings(flat),\n"
            "    'β 0.5 → 0 over 6, soft': PosteriorSettings(anneal),\n"
            "    'β 0.5 → 0, hard always': PosteriorSettings(anneal, hard='always'),\n"
            "    'β 0.5 → 0, hard after anneal': PosteriorSettings(anneal, hard='after_anneal'),\n"
            "    'β 0.5 → 0, hard first 3': PosteriorSettings(anneal, hard='first_n', hard_iterations=3),\n"
            "}\n"
            "results = {name: run(posterior, max_iterations=10) for name, posterior in runs.items()}\n"
            "for name, r in results.items():\n"
            "    ess = ct.effective_sample_size(torch.from_numpy(r.posteriors_estep).double())\n"
            "    acc = ct.classification_accuracy(r.posteriors.argmax(1), truth, 2)\n"
            "    print(f'{name:32s} accuracy {100 * acc:5.1f} %   E-step ESS: mean {float(ess.mean()):.2f},"
            " > 1.1 for {100 * float((ess > 1.1).double().mean()):.0f} % of particles')"
        ),
        new_markdown_cell(
            "The mean class ESS per iteration (after the layers) shows what each schedule "
            "does: β pulls it towards K = 2, force-hard pins it at 1. The E-step's own ESS "
            "(printed above) stays above 1 for some particles even at β = 0 (a few per cent "
            "here; many more when the classes differ less or the signal is weaker), and "
            "forcing those particles into one class from the start (hard always) costs "
            "accuracy, while hard after the anneal does not."
        ),
        new_code_cell(
            "for name, r in results.items():\n"
            "    plt.plot([h['mean_class_ess'] for h in r.history], marker='.', label=name)\n"
            "plt.xlabel('iteration'); plt.ylabel('mean class ESS'); plt.legend(fontsize=7)\n"
            "plt.show()"
        ),
    ]


def custom_and_gradients() -> list:
    return [
        new_markdown_cell(
            "# Your own posterior layer and regulariser, trained with gradients\n\n"
            "Every piece is a torch module or function, so a new algorithm is a few lines: "
            "here a posterior layer that sharpens the posterior (γ^(1/τ), renormalised), a "
            "regulariser that low-passes the maps, and a gradient loop that trains the two "
            "class maps with Adam through the E-step and the layer "
            "(`optim=gradient` does this for you, with the built-in layers)."
        ),
        new_code_cell("N_PARTICLES, SNR, CLOSED = 1000, 0.1, 1.0\n" + SIMULATE),
        new_code_cell(
            "from torch import nn\n\n"
            "class Sharpen(nn.Module):\n"
            '    """γ\' ∝ softmax(scores)^(1/τ): τ < 1 sharpens, τ = 1 is the posterior."""\n'
            "    def __init__(self, tau: float):\n"
            "        super().__init__()\n"
            "        self.tau = tau\n"
            "    def forward(self, scores):\n"
            "        return torch.softmax(scores / self.tau, dim=1)\n\n"
            "class LowpassPrior(ct.Regulariser):\n"
            '    """T·τ² maps (EM), low-passed; as a penalty: the power beyond the cut-off."""\n'
            "    def __init__(self, resolution, pixel_size):\n"
            "        super().__init__()  # a Regulariser is a torch.nn.Module\n"
            "        self.resolution, self.pixel_size = resolution, pixel_size\n"
            "    def forward(self, stats, k, d, pad, mask, pixel_size):\n"
            "        maps = ct.update_maps(stats, d, pad, 4.0, mask)\n"
            "        return lowpass_3d(maps, self.resolution, pixel_size) * mask, {}\n"
            "    def penalty(self, maps):\n"
            "        spectra = rfft_3d(maps)\n"
            "        d = maps.shape[-1]\n"
            "        beyond = shell_index_3d(d) > d * self.pixel_size / self.resolution\n"
            "        return 1e-3 * (spectra.abs() ** 2 * beyond).sum()\n\n"
            "from cryotorch.physics.fourier import rfft_3d\n"
            "from cryotorch.physics.masks import lowpass_3d\n"
            "from cryotorch.physics.shells import shell_index_3d"
        ),
        new_markdown_cell(
            "The regulariser plugs into the EM loop as it is (`ct.classify(..., regulariser=...)`):"
        ),
        new_code_cell(
            CLASSIFY_HELPER
            + "\nsettings = ct.ClassificationSettings(model=ct.ModelSettings(target_resolution=8.0),"
            " optim=ct.OptimSettings(max_iterations=6, online_epochs=0.0), progress=False)\n"
            "r = ct.classify(batcher, settings, regulariser=LowpassPrior(10.0, pixel_size * box / d_work))\n"
            "print('EM with LowpassPrior:', ct.classification_accuracy(r.posteriors.argmax(1), truth, 2))"
        ),
        new_markdown_cell(
            "And a gradient loop by hand: maps as parameters (`ct.ClassMaps`), the E-step on "
            "mini-batches, the custom layer, and the free energy Σ_k γ'(ℓ + log π) − γ' log γ' "
            "(`ct.free_energy`) minus the penalty as the objective."
        ),
        new_code_cell(
            "init = ct.fourier_crop_3d(torch.from_numpy(maps), d_work).mean(0, keepdim=True)\n"
            "init = init + 0.2 * init.std() * torch.randn(2, d_work, d_work, d_work)  # two noisy copies of the average\n"
            "mask = ct.soft_sphere(d_work, 0.45 * d_work)\n"
            "model = ct.ClassMaps(init, torch.tensor([0.5, 0.5]), mask, train_prior=True)\n"
            "optimizer = torch.optim.Adam(model.parameters(), lr=0.2)\n"
            "layer, prior, estep = Sharpen(tau=0.8), LowpassPrior(10.0, pixel_size * box / d_work), ct.EStep()\n"
            "first = batcher(np.arange(500))\n"
            "noise = ct.NoiseModel.from_images(first.spectra, first.optics_group, n_groups=1)\n"
            "n = len(images)\n"
            "for epoch in range(8):\n"
            "    posteriors = np.zeros((n, 2), np.float32)\n"
            "    for rows in np.array_split(np.random.default_rng(epoch).permutation(n), n // 100):\n"
            "        batch = batcher(np.sort(rows))\n"
            "        result = estep(ct.prepare_volumes(model.maps()), batch, noise, max_shell=d_work // 2)\n"
            "        scores = result.loglik + model.log_prior()\n"
            "        gamma = layer(scores)\n"
            "        loss = -ct.free_energy(scores, gamma).mean() + prior.penalty(model.maps()) / n\n"
            "        optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
            "        posteriors[batch.rows] = gamma.detach().numpy()\n"
            "    acc = ct.classification_accuracy(posteriors.argmax(1), truth, 2)\n"
            "    print(f'epoch {epoch}: loss {loss.item():.1f}, accuracy {100 * acc:.1f} %')\n"
            "assert acc > 0.8"
        ),
    ]


def round_trip() -> list:
    return [
        new_markdown_cell(
            "# From a RELION or cryoSPARC job, and back\n\n"
            "cryotorch reads the particles of a consensus refinement (RELION's "
            "`run_data.star` or cryoSPARC's `particles.cs` with its passthrough), classifies "
            "them with their poses and CTFs fixed, and writes the same file back with the "
            "classes added. Here a simulated data set stands in for the refinement job."
        ),
        new_code_cell("N_PARTICLES, SNR, CLOSED = 600, 0.1, 1.0\n" + SIMULATE),
        new_markdown_cell(
            "**RELION**: the STAR file goes straight in (`cryotorch-classify` is the same "
            "command as on a cluster; `logger=none` skips TensorBoard here)."
        ),
        new_code_cell(
            "import subprocess, sys, shutil\n"
            "out = work / 'class3d_relion'\n"
            "command = [sys.executable, '-m', 'cryotorch.cli.classify', f'data.particles={star}',\n"
            "           'model.num_classes=2', 'model.target_resolution=8', f'output_dir={out}',\n"
            "           'model.resolution_reach_at=4', 'logger=none', 'logger.quiet=true',\n"
            "           'optim.max_iterations=6']\n"
            "print(subprocess.run(command, capture_output=True, text=True, check=True).stdout[-300:])\n"
            "table = ct.read_particles(out / 'particles.star')\n"
            "import starfile\n"
            "particles = starfile.read(out / 'particles.star', always_dict=True)['particles']\n"
            "print(particles[['rlnImageName', 'rlnClassNumber', 'rlnMaxValueProbDistribution']].head())\n"
            "print(particles['rlnClassNumber'].value_counts())"
        ),
        new_markdown_cell(
            "Back in RELION: `particles.star` keeps every input column and adds "
            "`rlnClassNumber`, so RELION's programs take it as it is, e.g. "
            "`relion_reconstruct --i particles.star --class 1 --ctf --o class1.mrc` to "
            "reconstruct one class at full size, or *Subset selection* on it in the GUI. "
            "(The next cell runs that command if RELION is installed.)"
        ),
        new_code_cell(
            "if shutil.which('relion_reconstruct'):\n"
            "    subprocess.run(['relion_reconstruct', '--i', 'particles.star', '--class', '1',\n"
            "                    '--ctf', '--o', 'class1_full.mrc'], cwd=out, check=True, capture_output=True)\n"
            "    full, voxel = ct.read_map(out / 'class1_full.mrc')\n"
            "    print('relion_reconstruct of class 1:', full.shape, voxel, 'Å/px')\n"
            "else:\n"
            "    print('RELION is not installed here: skipped')"
        ),
        new_markdown_cell(
            "**cryoSPARC**: the same particles as a `.cs` file (here converted from the STAR "
            "file with `cryotorch-convert`; from a real job, pass its `particles.cs` and "
            "`data.passthrough=..._passthrough_particles.cs`). The output `particles.cs` "
            "keeps every input field and adds `alignments3D/class` and per-class posteriors."
        ),
        new_code_cell(
            "cs = work / 'particles.cs'\n"
            "subprocess.run([sys.executable, '-m', 'cryotorch.cli.convert', str(star), str(cs)], check=True)\n"
            "out_cs = work / 'class3d_cryosparc'\n"
            "command = [sys.executable, '-m', 'cryotorch.cli.classify', f'data.particles={cs}',\n"
            "           'model.num_classes=2', 'model.target_resolution=8', f'output_dir={out_cs}',\n"
            "           'model.resolution_reach_at=4', 'logger=none', 'logger.quiet=true',\n"
            "           'optim.max_iterations=6']\n"
            "subprocess.run(command, capture_output=True, text=True, check=True)\n"
            "result = np.load(out_cs / 'particles.cs')\n"
            "print([name for name in result.dtype.names if 'class' in name])\n"
            "accuracy = ct.classification_accuracy(result['alignments3D/class'], truth, 2)\n"
            "print(f'accuracy {100 * accuracy:.1f} %')\n"
            "assert accuracy > 0.9"
        ),
        new_markdown_cell(
            "Back into cryoSPARC with cryosparc-tools: "
            "`project.save_external_result(workspace_uid, dataset, type='particle', "
            "slots=['alignments3D'], passthrough=(job_uid, 'particles'))` with `dataset = "
            "Dataset.load('particles.cs')`, then split by class with a *Particle Sets Tool* "
            "job, or read `alignments3D/class` in your own script."
        ),
    ]


def main() -> None:
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    for name, cells in (
        ("01_quickstart.ipynb", quickstart()),
        ("02_class_similarity_and_force_hard.ipynb", similarity_and_hard()),
        ("03_custom_layer_regulariser_gradients.ipynb", custom_and_gradients()),
        ("04_relion_cryosparc_round_trip.ipynb", round_trip()),
    ):
        nbformat.write(new_notebook(cells=cells, metadata=kernel), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
