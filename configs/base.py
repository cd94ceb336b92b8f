"""Base configuration: every field the engine knows, with the reference's names.

Experiment configs import this file and change a few fields. Run any of them as
    python main.py --config configs/<name>.py [--config.FIELD=VALUE ...] [--workdir DIR]
Field names follow configs/README.md of the PyTorch reference (ens-hse-diploma); the
project's docs/training.md maps each one to its meaning.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = 'base'  # experiment (method) name; groups runs in the analysis tables

  # Seed and directories.
  c.seed = 0
  c.work_dir = './experiments/'  # runs go to <work_dir>/<dataset>/<wandb_group>/<model>_seed=<seed>/
  c.ckpt = './checkpoints/byol-1000ep-1.pt'  # convert_byol.py output dir or torch .pt; '' = scratch
  c.ckpts = ()  # Global DE: one pre-trained checkpoint per member
  c.new_head = False  # a fresh head on the checkpoint also when its head has num_classes outputs
  c.overwrite = False  # start afresh in a work dir that holds a run
  c.save_all_models = False

  # Model, dataset and augmentation.
  c.model = 'ImageNetResNet50'
  c.width = 64  # base width of the ResNet (64 = torchvision); small values for tests
  c.init_scheme = 'torch'  # from scratch (ckpt=''): torch's layer defaults drawn by torch, as the reference | torchvision
  c.dataset = 'cifar100'
  c.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
  c.class_subset = ()  # keep only these labels (remapped to 0..k-1); () = all
  c.train_per_class = 0  # keep this many training images of each class (nested draws); 0 = all
  c.transform_name = 'imagenet'  # imagenet | cifar | none
  c.image_size = 224
  c.interpolation = 'bilinear'
  c.use_test = True
  c.batch_size = 256
  c.drop_last = False  # skip an epoch's last partial batch (the reference's Swin loaders)
  c.eval_batch_size = 500
  c.data_workers = 0  # host threads cutting train crops (variable-size datasets, imagenet); 0 = all cores
  c.dtype = 'float32'  # float32 | bfloat16 (compute dtype; params stay float32)
  c.remat = False  # ResNet: recompute each residual block in backward (less memory, same result)

  # Training.
  c.epochs = 25
  c.optimizer = 'sgd'  # sgd | adamw
  c.lr = 0.05
  c.wd = 1e-4
  c.momentum = 0.9
  c.nesterov = False
  c.scheduler = 'cosine'
  c.warmup_lr = c.get_ref('lr')  # follows lr unless set, as in the reference
  c.warmup_epochs = 0
  c.eta_min = 0.0
  c.grad_accum_steps = 1  # micro-batches per step (same update, less memory)
  # The Swin recipe (the reference's configs/swin/swin_base.py names); these defaults leave
  # ResNet runs as they were.
  c.label_smoothing = 0.0  # targets (1 - ls) one-hot + ls / num_classes
  c.clip_grad = 0.0  # clip the gradient to this global norm; 0 = off (the reference's None)
  c.simmim = False  # SimMIM fine-tuning: layer-wise lr decay (Swin only)
  c.layer_decay = 0.85  # lr scale per Swin layer group when simmim
  c.aug = ml_collections.ConfigDict()  # transform_name='swin_imagenet' and Mixup / CutMix
  c.aug.auto_augment = 'rand-m9-mstd0.5-inc1'  # timm RandAugment string, or 'none'
  c.aug.color_jitter = 0.4  # inactive when auto_augment is set, as in timm
  c.aug.reprob = 0.25  # random erasing probability
  c.aug.remode = 'pixel'  # random erasing fill: per-pixel N(0, 1)
  c.aug.recount = 1
  c.aug.mixup = 0.0  # Mixup alpha (> 0 enables it); the Swin configs set 0.8
  c.aug.cutmix = 0.0  # CutMix alpha (> 0 enables it); the Swin configs set 1.0
  c.aug.mixup_prob = 1.0
  c.aug.mixup_switch_prob = 0.5
  c.aug.mixup_mode = 'batch'  # one lambda per batch (the only mode here)

  # Ensembles: SSE / StarSSE (num_fge members from one run), Local / Global DE.
  c.ensemble = 'sse'  # sse | local_de | global_de
  c.num_fge = 1
  c.fge_epochs = 0  # 0 = epochs (the reference's None)
  c.fge_lr = 0.05
  c.fge_warmup_epochs = 0
  c.star_fge = False
  c.reset_optim_state = True
  c.num_members = 1  # Local DE: number of independent fine-tunings
  c.parallel_members = True  # train independent members at once under jax.vmap
  c.mesh_members = 1  # devices along the mesh's 'members' axis; the rest split each batch

  # Feature-map similarity losses (the thesis's additions).
  c.which_model_is_regularizer = 'first'  # first | pretrain
  c.fmap_betas = (0.0, 0.0, 0.0, 0.0, 0.0)
  c.fmap_loss_type = 'RTDLoss'  # RTDLoss | MinMaxRTDLoss | MSELoss
  c.rtd_dim = 1
  c.rtd_card = 50
  c.rtd_lp = 1.0
  c.rtd_workers = -1  # exact RTD: processes for the filtrations; 0 = serial, -1 = one per filtration up to the cores
  c.wo_beta = 0.0
  c.wo_gradient = False  # False: the reference (the WO term is logged, without gradient)
  c.prev_ce_beta = 0.0
  c.only_negative = False
  c.freeze_layers = ()
  c.freeze_bn_stats = False

  # Pre-training stage run before fine-tuning (used by the quickstart only).
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.enabled = False
  c.pretrain.class_subset = ()
  c.pretrain.dataset = ''  # pre-train on this dataset; '' = the fine-tuning dataset
  c.pretrain.epochs = 0
  c.pretrain.lr = 0.1

  # Logging and checkpoints.
  c.valid_freq = 4
  c.log_every_steps = 30  # reference: wandb_log_rate
  c.checkpoint_every_minutes = 5.0  # progress checkpoints (asynchronous); 0 = every epoch
  c.checkpoint_every_steps = 0  # also every N steps (0 = off)
  c.progress = True
  c.compilation_cache_dir = '~/.cache/enstransfer_jax/xla'  # XLA's persistent cache; '' = off
  c.wandb_mode = 'auto'  # auto (online when logged in, else offline) | online | offline | disabled
  c.wandb_project = 'EnsForTransfer'
  c.wandb_group = 'BYOL_Test'
  c.exp_name = ''
  return c
