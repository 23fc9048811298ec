"""PyTorch's cnn7 (the same layers, shapes and batch as ``cybn.nn.cnn7(bn="all")``) and its
training step: the baseline of bench_training.py. Imports torch only, never cybn, so a child
process can time PyTorch with its own OpenMP defaults (cybn's import sets OMP_WAIT_POLICY)."""


def torch_model(torch):
    nn = torch.nn

    def conv(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = (conv(3, 32) + conv(32, 32) + [nn.MaxPool2d(2)] + conv(32, 64) + conv(64, 64)
              + [nn.MaxPool2d(2)] + conv(64, 128) + [nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(2048, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
              nn.Linear(256, 10, bias=False), nn.BatchNorm1d(10)])
    return nn.Sequential(*layers)


def torch_step_fn(torch, x, y, channels_last):
    model = torch_model(torch)
    tx = torch.from_numpy(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    ty = torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(tx), ty).backward()
        opt.step()
    return step
