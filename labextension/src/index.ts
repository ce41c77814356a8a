/**
 * jupyter-tfserve in JupyterLab: a side panel with the served models, a status
 * bar item with the engine's health, and commands for every action.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  InputDialog,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { UUID } from '@lumino/coreutils';

import iconSvg from '../style/icons/tfserve.svg';
import {
  IModel,
  createToken,
  listModels,
  metadata,
  predictUrl,
  promote,
  unload,
  v2InferUrl
} from './api';
import {
  DeployBody,
  PromoteBody,
  ShareOptionsBody,
  ShareResultBody,
  availableVersions
} from './dialogs';
import { curlCommand, exampleRequest } from './example';
import { TFServePanel } from './panel';
import { TFServeStatus } from './status';

export const tfserveIcon = new LabIcon({
  name: 'jupyter-tfserve:icon',
  svgstr: iconSvg
});

export namespace CommandIDs {
  export const openPanel = 'tfserve:open-panel';
  export const refresh = 'tfserve:refresh';
  export const unload = 'tfserve:unload';
  export const promote = 'tfserve:promote';
  export const share = 'tfserve:share';
  export const deploy = 'tfserve:deploy';
  export const openDashboard = 'tfserve:open-dashboard';
}

const CATEGORY = 'TF Serving';

function modelArg(args: any): string | undefined {
  return typeof args?.model === 'string' && args.model ? args.model : undefined;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The notebook that "Open A/B dashboard" creates. */
export function dashboardNotebook(model: string, kernelName: string, displayName: string): any {
  const cell = (source: string) => ({
    cell_type: 'code',
    id: UUID.uuid4().slice(0, 8),
    metadata: {},
    execution_count: null,
    outputs: [],
    source
  });
  return {
    nbformat: 4,
    nbformat_minor: 5,
    metadata: {
      kernelspec: { name: kernelName, display_name: displayName, language: 'python' },
      language_info: { name: 'python' }
    },
    cells: [cell('%load_ext jupyter_tfserve'), cell(`%tfserve dashboard ${model}`)]
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-tfserve:plugin',
  description: 'Served models, live latency and sharing for jupyter-tfserve.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null
  ) => {
    const { commands, shell, serviceManager } = app;

    const panel = new TFServePanel({
      promote: model => void commands.execute(CommandIDs.promote, { model }),
      unload: model => void commands.execute(CommandIDs.unload, { model }),
      share: model => void commands.execute(CommandIDs.share, { model }),
      deploy: model => void commands.execute(CommandIDs.deploy, { model }),
      openDashboard: model => void commands.execute(CommandIDs.openDashboard, { model }),
      refresh: () => void commands.execute(CommandIDs.refresh)
    });
    panel.title.icon = tfserveIcon;
    shell.add(panel, 'left', { rank: 700 });
    if (restorer) {
      restorer.add(panel, 'jupyter-tfserve-panel');
    }

    if (statusBar) {
      const status = new TFServeStatus(() => void commands.execute(CommandIDs.openPanel));
      panel.snapshot.connect((_, snapshot) => status.setSnapshot(snapshot));
      statusBar.registerStatusItem('jupyter-tfserve:status', {
        item: status,
        align: 'left',
        rank: 10
      });
    }

    /** The model named in the command's arguments, or one the user picks. */
    async function pickModel(args: any, title: string): Promise<IModel | null> {
      let models = panel.models;
      const named = modelArg(args);
      if (!named || !models.some(m => m.name === named)) {
        try {
          models = await listModels();
        } catch (error) {
          await showErrorMessage('TF Serving', errorText(error));
          return null;
        }
      }
      if (named) {
        const model = models.find(m => m.name === named);
        if (!model) {
          await showErrorMessage('TF Serving', `Model ${named} is not served.`);
          return null;
        }
        return model;
      }
      if (models.length === 0) {
        await showErrorMessage('TF Serving', 'No models are served.');
        return null;
      }
      if (models.length === 1) {
        return models[0];
      }
      const answer = await InputDialog.getItem({
        title,
        items: models.map(m => m.name)
      });
      if (!answer.button.accept || !answer.value) {
        return null;
      }
      return models.find(m => m.name === answer.value) ?? null;
    }

    commands.addCommand(CommandIDs.openPanel, {
      label: 'Show the TF Serving Panel',
      caption: 'Show the served models',
      icon: tfserveIcon,
      execute: () => shell.activateById(panel.id)
    });

    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the TF Serving Models',
      execute: () => panel.refresh()
    });

    commands.addCommand(CommandIDs.unload, {
      label: args => (modelArg(args) ? `Unload ${modelArg(args)}` : 'Unload a Served Model…'),
      execute: async args => {
        const model = await pickModel(args, 'Unload which model?');
        if (!model) {
          return;
        }
        const answer = await showDialog({
          title: `Unload ${model.name}?`,
          body:
            `Stop serving every version of ${model.name}. Clients get 404 from now on; ` +
            'the files on disk are kept.',
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Unload' })]
        });
        if (!answer.button.accept) {
          return;
        }
        try {
          await unload(model.name);
        } catch (error) {
          await showErrorMessage(`Unload ${model.name}`, errorText(error));
        }
        await panel.refresh();
      }
    });

    commands.addCommand(CommandIDs.promote, {
      label: args =>
        modelArg(args) ? `Promote a Version of ${modelArg(args)}` : 'Promote a Model Version to Stable…',
      execute: async args => {
        const model = await pickModel(args, 'Promote a version of which model?');
        if (!model) {
          return;
        }
        let version = typeof args.version === 'number' ? args.version : Number(args.version);
        if (!Number.isInteger(version) || version < 1) {
          if (availableVersions(model).length === 0) {
            await showErrorMessage(`Promote ${model.name}`, 'No version of this model is AVAILABLE.');
            return;
          }
          const answer = await showDialog({
            title: `Promote a version of ${model.name} to stable`,
            body: new PromoteBody(model),
            buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Promote' })]
          });
          if (!answer.button.accept || answer.value === null) {
            return;
          }
          version = answer.value;
        }
        try {
          await promote(model.name, version);
        } catch (error) {
          await showErrorMessage(`Promote ${model.name}`, errorText(error));
        }
        await panel.refresh();
      }
    });

    commands.addCommand(CommandIDs.share, {
      label: args => (modelArg(args) ? `Share ${modelArg(args)}` : 'Share a Served Model…'),
      execute: async args => {
        const model = await pickModel(args, 'Share which model?');
        if (!model) {
          return;
        }
        const options = await showDialog({
          title: `Share ${model.name}`,
          body: new ShareOptionsBody(model.name),
          buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Create token' })]
        });
        if (!options.button.accept || options.value === null) {
          return;
        }
        let token;
        try {
          token = await createToken(model.name, options.value);
        } catch (error) {
          await showErrorMessage(`Share ${model.name}`, errorText(error));
          return;
        }
        let body = '{"instances": [1.0, 2.0]}';
        try {
          body = exampleRequest(await metadata(model.name));
        } catch {
          // The example stays generic.
        }
        const url = predictUrl(model.name);
        await showDialog({
          title: `Share ${model.name}`,
          body: new ShareResultBody(
            token,
            url,
            curlCommand(url, token.token, body),
            v2InferUrl(model.name)
          ),
          buttons: [Dialog.okButton({ label: 'Close' })]
        });
      }
    });

    commands.addCommand(CommandIDs.deploy, {
      label: args =>
        modelArg(args)
          ? `Deploy ${modelArg(args)} to Kubernetes or KServe`
          : 'Deploy a Model to Kubernetes or KServe…',
      execute: async args => {
        const model = await pickModel(args, 'Deploy which model?');
        if (!model) {
          return;
        }
        await showDialog({
          title: `Deploy ${model.name}`,
          body: new DeployBody(model.name),
          buttons: [Dialog.okButton({ label: 'Close' })]
        });
      }
    });

    commands.addCommand(CommandIDs.openDashboard, {
      label: args =>
        modelArg(args) ? `Open the A/B Dashboard of ${modelArg(args)}` : 'Open the A/B Dashboard of a Model…',
      execute: async args => {
        const model = await pickModel(args, 'Open the A/B dashboard of which model?');
        if (!model) {
          return;
        }
        try {
          await serviceManager.kernelspecs.ready;
          const specs = serviceManager.kernelspecs.specs;
          const kernelName = specs?.default ?? 'python3';
          const displayName = specs?.kernelspecs[kernelName]?.display_name ?? 'Python 3';
          const created = await serviceManager.contents.newUntitled({ type: 'notebook', path: '' });
          await serviceManager.contents.save(created.path, {
            type: 'notebook',
            format: 'json',
            content: dashboardNotebook(model.name, kernelName, displayName)
          });
          return await commands.execute('docmanager:open', {
            path: created.path,
            factory: 'Notebook'
          });
        } catch (error) {
          await showErrorMessage(`A/B dashboard of ${model.name}`, errorText(error));
        }
      }
    });

    if (palette) {
      for (const command of [
        CommandIDs.openPanel,
        CommandIDs.refresh,
        CommandIDs.unload,
        CommandIDs.promote,
        CommandIDs.share,
        CommandIDs.deploy,
        CommandIDs.openDashboard
      ]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }
  }
};

export default plugin;
