"""DEM settings: the formulation, particle sizes, contact model, settling and press schedule, each
chosen by measurement (docs/dem.md). Every file stores the values it was made with.

Units inside LIGGGHTS are ``micro``: um, us, pg, so a speed in um/us is one in m/s and a pressure
unit is 1 kPa.
"""

from __future__ import annotations

import numpy as np

from ..electrode.schedule import PRESS_SPEED_M_S
from ..electrode.volume import AM, CBD, DEFAULT_NANOPOROSITY
from ..errors import CalbatchError

# NMC111 diameters (um) and counts of Ngandjong et al. 2021; calbatch draws the AM particles in these
# proportions. 140 of them with their 96:4 CBD settle in the 30.4 x 30.4 um box to about 45 um.
AM_DIAMETERS_UM = np.array([2.5, 3.5, 4.5, 5.86, 8.28, 10.35])
AM_COUNTS = np.array([73, 91, 64, 57, 82, 29])
DEFAULT_AM_PARTICLES = 140

# Formulation (the paper's 96 % NMC111 - 2 % C65 - 2 % PVdF, by weight). The CBD is a nanoporous
# domain of carbon + binder: its skeleton (C65 ~1.9, PVdF ~1.78 g/cm3) at the default nanoporosity
# 0.5 gives the domain density 0.93 g/cm3 of the Franco group's CBD particles.
AM_DENSITY = 4.65  # g/cm3 = pg/um^3
CBD_SKELETON_DENSITY = 1.86
DEFAULT_MASS_RATIO = (96.0, 4.0)
# CBD spheres of 2 um (5 voxels across): the time step and the particle count both grow as the CBD
# shrinks, and 2 um is what a dataset of 56 series affords on two cores (docs/dem.md).
CBD_DIAMETER_UM = 2.0


def cbd_density(nanoporosity: float = DEFAULT_NANOPOROSITY) -> float:
    """Apparent density of the nanoporous CBD domain (g/cm3)."""
    return CBD_SKELETON_DENSITY * (1 - nanoporosity)


def cbd_volume_fraction(mass_ratio=DEFAULT_MASS_RATIO, nanoporosity: float = DEFAULT_NANOPOROSITY) -> float:
    """CBD domain volume / solid (AM + CBD domain) volume for an AM:CBD mass ratio."""
    am, cbd = (float(m) for m in mass_ratio)
    if not (am > 0 and cbd >= 0):
        raise CalbatchError(f"--mass-ratio: AM:CBD must be positive numbers, got {am:g}:{cbd:g}")
    if not 0 <= nanoporosity < 1:
        raise CalbatchError(f"--nanoporosity: must be in [0, 1), got {nanoporosity:g}")
    v_am, v_cbd = am / AM_DENSITY, cbd / cbd_density(nanoporosity)
    return v_cbd / (v_am + v_cbd)


LIGGGHTS_TYPE = {AM: 1, CBD: 2}  # type 3 is the press, 4 the current collector

# Contact model (types AM, CBD, wall). Moduli are softened from 200/2 GPa so that the time step
# stays affordable; the press is displacement-controlled, so the structure is set by overlaps and
# rearrangement, and the dt/speed checks in docs/dem.md show the result does not depend on them.
CONTACT_MODEL = "hooke/hysteresis tangential history cohesion sjkr"
# Pair tables are 4 x 4 over (AM, CBD, press, collector); the press never sticks, the collector
# holds the electrode as the binder does (without it the released bed springs off the collector).
CONTACT = {
    "youngs_modulus_gpa": [5.0, 2.0, 5.0, 5.0],
    "poisson": [0.3, 0.45, 0.3, 0.3],
    "restitution": 0.3,
    "friction": 0.5,
    "characteristic_velocity_m_s": 1.0,
    # k2max / k1: unloading stiffer than loading -> permanent compaction; adhesion and plasticity
    # depth chosen by measured spring-back at CD 35 (docs/dem.md)
    "max_elastic_stiffness": 10.0,
    "adhesion_stiffness": [[5, 5, 0, 5], [5, 5, 0, 5], [0, 0, 0, 0], [5, 5, 0, 0]],
    # Walls reach their stiff elastic branch at once (depth 0.01): a soft, plastic collector lets
    # particles through it at CD 45-50, where the solids nearly fill the pressed box.
    "plasticity_depth": [[0.2, 0.2, 0.01, 0.01], [0.2, 0.2, 0.01, 0.01], [0.01, 0.01, 0.01, 0.01],
                         [0.01, 0.01, 0.01, 0.01]],
    "cohesion_energy_density_kj_m3": [[0, 20000, 0, 300], [20000, 20000, 0, 20000], [0, 0, 0, 0],
                                      [300, 20000, 0, 0]],
    "release_damping": 10.0,  # fix viscous gamma (pg/us) during release and relaxation
}
DT_PER_UM = 2.5e-4  # time step in us per um of the smallest diameter (halving it changes nothing)
# Settling: an artificial gravity (the drying stand-in) over a fall long enough for the whole bed,
# then viscous quenching; lower friction and cohesion (the binder still wet) while settling set the
# uncalendered porosity: cohesion x 1 / 0.45 / 0.3 / 0.2 gave 0.55 / 0.44 / 0.43 / 0.40 (seed 1).
# The fall lasts fall_us at least, then goes on in chunks until no particle moves faster than
# settle_speed (a tall or tiny bed takes longer to come down), up to max_fall_us. A bed whose
# particles never all slow down is still settled if its mean height fell less than settle_sink_um
# in the last chunk: seed 9's bed stopped (its mean height within 0.0021 um from 250 to 600 us), but a few
# of its spheres kept rattling at 0.052-0.074 um/us to the end; the quench then stills them.
PACK = {"box_height_factor": 3.3, "gravity_um_us2": 0.02, "fall_us": 150.0, "quench_us": 50.0,
        "quench_damping": 50.0, "friction": 0.1, "cohesion_factor": 0.45,
        "settle_speed_um_us": 0.05, "settle_chunk_us": 10.0, "max_fall_us": 600.0, "settle_sink_um": 0.002}
DEFAULT_SPEED = PRESS_SPEED_M_S  # the press speed of a DEM run, m/s (= um/us)
# The press schedule (release by 0.6 x the travel at twice the speed, two relaxation frames, one
# frame per 1 um of travel) is calbatch.electrode.schedule's, shared with the model's rollouts.

DEFAULT_CDS = (20, 25, 30, 35, 40, 45, 50)  # the paper's grid
RANDOM_CD_RANGE = (20.0, 50.0)  # where the dataset's further electrodes draw their CDs
